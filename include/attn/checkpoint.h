// SPDX-License-Identifier: Apache-2.0
// Placeholder: the sharded-checkpoint reader (Checkpoint) is being written.
#ifndef ATTN_CHECKPOINT_H_
#define ATTN_CHECKPOINT_H_
#endif  // ATTN_CHECKPOINT_H_
