# SPDX-License-Identifier: Apache-2.0
# A package, so that this directory's conftest is imported as python_torch.conftest and does not
# take the place of tests/python_module's `conftest` (whose tests import it by that name) when
# one pytest run collects both directories.
