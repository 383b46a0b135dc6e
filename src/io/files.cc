// SPDX-License-Identifier: Apache-2.0
#include "io/files.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <utility>

#include "attn/error.h"

namespace attn::io {
namespace {

std::string ErrnoText(int error) { return std::strerror(error); }

std::string Quoted(std::string_view what, const std::string& path) {
  return std::string(what) + " '" + path + "'";
}

// The directory part of `path` for the temporary file and the directory fsync ("." for a bare
// file name).
std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// 12 random characters from [A-Za-z0-9]: 71 bits, so another local user cannot pre-create the
// name (the O_EXCL open below would fail safely anyway; unpredictability avoids a denial of
// service by squatting every name).
std::string RandomSuffix() {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  unsigned char random[12];
  size_t have = 0;
  while (have < sizeof(random)) {
    const ssize_t got = ::getrandom(random + have, sizeof(random) - have, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      break;
    }
    have += static_cast<size_t>(got);
  }
  if (have < sizeof(random)) {
    // No getrandom (very old kernels, seccomp): a clock/pid mix. O_EXCL still keeps it safe.
    uint64_t mix =
        static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
        (static_cast<uint64_t>(::getpid()) << 32);
    for (unsigned char& byte : random) {
      mix = mix * 6364136223846793005ull + 1442695040888963407ull;
      byte = static_cast<unsigned char>(mix >> 56);
    }
  }
  std::string suffix;
  for (unsigned char byte : random) suffix.push_back(kAlphabet[byte % (sizeof(kAlphabet) - 1)]);
  return suffix;
}

// Removes the temporary file unless released; keeps every failure path clean.
class TempFileGuard {
 public:
  explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
  ~TempFileGuard() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  void Release() { path_.clear(); }

 private:
  std::string path_;
};

[[noreturn]] void ThrowWriteError(const std::string& path, const std::string& step, int error) {
  throw Error(ErrorKind::kIo, "cannot write '" + path + "': " + step + ": " + ErrnoText(error));
}

}  // namespace

UniqueFd::UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

RegularFile OpenRegularFile(const std::string& path, std::string_view what) {
  // O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer, forever. It is cleared
  // below once the file is known to be regular (where it has no effect anyway).
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    throw Error(ErrorKind::kIo, "cannot open " + Quoted(what, path) + ": " + ErrnoText(errno));
  }
  RegularFile file{UniqueFd(fd), 0};
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    throw Error(ErrorKind::kIo, "cannot stat " + Quoted(what, path) + ": " + ErrnoText(errno));
  }
  if (!S_ISREG(info.st_mode)) {
    const char* kind = S_ISDIR(info.st_mode)    ? "a directory"
                       : S_ISFIFO(info.st_mode) ? "a FIFO"
                       : S_ISSOCK(info.st_mode) ? "a socket"
                       : S_ISCHR(info.st_mode)  ? "a character device"
                       : S_ISBLK(info.st_mode)  ? "a block device"
                                                : "not a plain file";
    throw Error(ErrorKind::kIo, "cannot read " + Quoted(what, path) +
                                    ": is not a regular file (it is " + kind + ")");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    throw Error(ErrorKind::kIo, "cannot open " + Quoted(what, path) + ": " + ErrnoText(errno));
  }
  file.size = static_cast<uint64_t>(info.st_size);
  return file;
}

std::string ReadWholeFile(const std::string& path, std::string_view what, size_t max_bytes) {
  const RegularFile file = OpenRegularFile(path, what);
  const auto too_big = [&] {
    return Error(ErrorKind::kInvalidArgument, Quoted(what, path) + " is larger than the " +
                                                  std::to_string(max_bytes >> 20) +
                                                  " MiB limit for " + std::string(what) + " files");
  };
  if (file.size > max_bytes) throw too_big();
  // Read until EOF rather than trusting st_size (the file may grow meanwhile), but never more
  // than max_bytes + 1 bytes: one byte past the cap proves the file is too big.
  std::string text(static_cast<size_t>(file.size) + 1, '\0');
  size_t length = 0;
  while (true) {
    if (length == text.size()) {
      if (text.size() > max_bytes) throw too_big();
      text.resize(std::min(max_bytes + 1, text.size() * 2 + 4096));
    }
    const ssize_t got = ::read(file.fd.get(), text.data() + length, text.size() - length);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::kIo, "cannot read " + Quoted(what, path) + ": " + ErrnoText(errno));
    }
    if (got == 0) break;
    length += static_cast<size_t>(got);
  }
  if (length > max_bytes) throw too_big();
  text.resize(length);
  return text;
}

void ReadExactlyAt(int fd, const std::string& path, uint64_t offset, void* buffer, size_t size) {
  auto* cursor = static_cast<char*>(buffer);
  size_t done = 0;
  while (done < size) {
    const ssize_t got = ::pread(fd, cursor + done, size - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::kIo, "cannot read '" + path + "' at byte " +
                                      std::to_string(offset + done) + ": " + ErrnoText(errno));
    }
    if (got == 0) {
      throw Error(ErrorKind::kCorruptFile,
                  path + ": file ended at byte " + std::to_string(offset + done) +
                      " while reading bytes [" + std::to_string(offset) + ", " +
                      std::to_string(offset + size) + ") (was it truncated after opening?)");
    }
    done += static_cast<size_t>(got);
  }
}

bool WriteAll(int fd, const void* data, size_t size) {
  const char* cursor = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd, cursor, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    cursor += written;
    size -= static_cast<size_t>(written);
  }
  return true;
}

void AtomicWriteFile(const std::string& path, const std::function<void(int fd)>& fill) {
  // Keep the permission bits of the file being replaced (a private 0600 output stays private).
  // stat follows a symlink at `path`: the mode is that of the file the user sees there.
  struct stat existing;
  const bool keep_mode = ::stat(path.c_str(), &existing) == 0 && S_ISREG(existing.st_mode);

  std::string temp_path;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    temp_path = path + ".tmp." + RandomSuffix();
    // O_EXCL|O_NOFOLLOW: never open something already there, in particular not a planted
    // symlink (O_EXCL alone already fails on any existing name, symlinks included; O_NOFOLLOW
    // says so explicitly). 0644 is reduced by the umask, as for any newly created file.
    fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) ThrowWriteError(path, "cannot create " + temp_path, errno);
  }
  if (fd < 0) ThrowWriteError(path, "no free temporary name beside it", EEXIST);
  TempFileGuard guard(temp_path);
  {
    UniqueFd owned(fd);
    if (keep_mode && ::fchmod(fd, existing.st_mode & 07777) != 0) {
      ThrowWriteError(path, "cannot set the mode of " + temp_path, errno);
    }
    fill(fd);
    // fsync before rename so that a crash cannot leave a renamed but empty file.
    if (::fsync(fd) != 0) ThrowWriteError(path, "fsync", errno);
  }
  if (::rename(temp_path.c_str(), path.c_str()) != 0) {
    ThrowWriteError(path, "cannot rename " + temp_path + " over it", errno);
  }
  guard.Release();
  // Make the rename itself durable. Some file systems cannot fsync a directory (EINVAL); the
  // data is already in place then, so only real I/O errors are reported.
  const int dir = ::open(DirectoryOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    UniqueFd dir_owned(dir);
    if (::fsync(dir) != 0 && errno == EIO) ThrowWriteError(path, "fsync of its directory", EIO);
  }
}

void AtomicWriteFile(const std::string& path, std::span<const std::span<const std::byte>> chunks) {
  AtomicWriteFile(path, [&](int fd) {
    for (const std::span<const std::byte>& chunk : chunks) {
      if (!WriteAll(fd, chunk.data(), chunk.size())) ThrowWriteError(path, "write", errno);
    }
  });
}

void AtomicWriteFile(const std::string& path, std::string_view bytes) {
  const std::span<const std::byte> chunk = std::as_bytes(std::span(bytes.data(), bytes.size()));
  AtomicWriteFile(path, std::span<const std::span<const std::byte>>(&chunk, 1));
}

}  // namespace attn::io
