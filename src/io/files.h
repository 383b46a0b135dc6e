// SPDX-License-Identifier: Apache-2.0
// The one place attn opens files it reads and replaces files it writes (internal header; the
// CLI and src/bench include it as "io/files.h"). Every reader and writer goes through here so
// that hostile paths get the same answer everywhere (docs/reference.md, "Limits and hostile
// input"):
//   - a FIFO, socket, device or directory given as an input is refused at open, without
//     blocking (O_NONBLOCK) and without reading from it;
//   - whole-file reads are bounded, so `--config /dev/zero` or a huge file cannot exhaust memory;
//   - a write goes to a fresh, exclusively created temporary file beside the target (never one a
//     planted symlink could redirect), keeps the mode of the file it replaces, is fsync'ed and
//     renamed over the target, and on any failure leaves the target untouched and no temporary.
// Every failure is an attn::Error naming the path.
#ifndef ATTN_IO_FILES_H_
#define ATTN_IO_FILES_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

namespace attn::io {

// Owns a file descriptor; closes it on destruction. Movable, not copyable.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept;
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership: returns the descriptor and forgets it.
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

struct RegularFile {
  UniqueFd fd;
  uint64_t size = 0;  // at open time
};

// Opens `path` read-only. Throws Error(kIo) "cannot open <what> '<path>': ..." when it does not
// exist or cannot be opened, and "... is not a regular file" for a directory, FIFO, socket or
// device. `what` names the role in messages ("config", "weights", ...).
RegularFile OpenRegularFile(const std::string& path, std::string_view what);

// The default cap of ReadWholeFile: configs are kilobytes; 16 MiB is far above any real one.
inline constexpr size_t kMaxConfigFileBytes = size_t{16} << 20;

// The whole content of the regular file `path`, at most `max_bytes` bytes. A larger file (or one
// that grows past the cap while being read) throws Error(kInvalidArgument) naming the cap.
std::string ReadWholeFile(const std::string& path, std::string_view what,
                          size_t max_bytes = kMaxConfigFileBytes);

// Reads exactly `size` bytes at `offset` of `fd` (pread, retried on EINTR and partial reads).
// A file that ends early — e.g. truncated by another process after it was opened — throws
// Error(kCorruptFile) "<path>: file ended at ... while reading ...", never a signal.
void ReadExactlyAt(int fd, const std::string& path, uint64_t offset, void* buffer, size_t size);

// Writes all of `size` bytes to `fd` (retrying partial writes and EINTR); false with errno set
// on failure. For AtomicWriteFile callbacks.
bool WriteAll(int fd, const void* data, size_t size);

// Replaces `path` atomically with the bytes `fill` writes to the descriptor it is given (the
// callback must not close it; it reports failure by throwing). Steps: a temporary
// "<path>.tmp.XXXXXXXXXXXX" created with O_CREAT|O_EXCL|O_NOFOLLOW and a random suffix in the
// same directory (retried on EEXIST); mode = the existing target's permission bits, else
// 0644 & ~umask; fill; fsync; rename over `path`; fsync the directory. Until the rename, any
// failure removes the temporary and leaves `path` untouched; Error(kIo) names `path`
// (exceptions thrown by `fill` propagate after the cleanup). A symlink at `path` itself is
// replaced by the new file, as rename(2) does; the file it pointed to is never written.
void AtomicWriteFile(const std::string& path, const std::function<void(int fd)>& fill);
void AtomicWriteFile(const std::string& path, std::span<const std::span<const std::byte>> chunks);
void AtomicWriteFile(const std::string& path, std::string_view bytes);

}  // namespace attn::io

#endif  // ATTN_IO_FILES_H_
