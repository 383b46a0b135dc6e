#include "attn/version.h"

namespace attn {

const char* Version() { return ATTN_VERSION_STRING; }

}  // namespace attn
