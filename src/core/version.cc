// SPDX-License-Identifier: Apache-2.0
#include "attn/version.h"

namespace attn {

const char* Version() { return ATTN_VERSION_STRING; }

}  // namespace attn
