// SPDX-License-Identifier: Apache-2.0
// attn_safetensors_check FILE...: opens each file with SafetensorsFile::Open (the reader every
// attn command uses) and reads every tensor attn can convert. For
// tests/python/test_safetensors_differential.py, which compares the verdicts with the official
// `safetensors` package. Exit status (of the last file that failed, else 0):
//   0  valid, every tensor read
//   2  invalid: attn::Error of any kind but kUnsupported (message on stderr)
//   3  valid safetensors holding a dtype attn does not read (kUnsupported)
//   1  anything else escaped: a bug
#include <cstdio>
#include <exception>
#include <string>

#include "attn/error.h"
#include "attn/safetensors.h"

int main(int argc, char** argv) {
  int status = 0;
  for (int i = 1; i < argc; ++i) {
    try {
      const attn::SafetensorsFile file = attn::SafetensorsFile::Open(argv[i]);
      for (const std::string& name : file.Names()) file.ReadBytes(name);
      std::printf("valid %s: %zu tensors\n", argv[i], file.Names().size());
    } catch (const attn::Error& e) {
      std::fprintf(stderr, "%s\n", e.what());
      status = e.kind() == attn::ErrorKind::kUnsupported ? 3 : 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "internal error: %s\n", e.what());
      return 1;
    }
  }
  return status;
}
