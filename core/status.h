// Status and StatusOr<T>: the error type used across every library boundary
// in Flotilla. Exceptions from LibTorch, cppzmq and protobuf are caught at the
// adapter that calls them and turned into a Status with an actionable message.
//
// Thread-safety: values; safe to copy between threads.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>

namespace flotilla {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // the caller's input is wrong; retrying will not help
  kNotFound,
  kAlreadyExists,
  kFailedPrecondition,
  kOutOfRange,
  kDataLoss,     // stored or received bytes are corrupt
  kUnavailable,  // transient: peer not up, timeout; retrying may help
  kResourceExhausted,
  kPermissionDenied,
  kAborted,
  kInternal,
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // True when the same operation may succeed if retried later.
  bool retryable() const { return code_ == StatusCode::kUnavailable; }

  // "INVALID_ARGUMENT: message", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "context: message".
  Status WithContext(const std::string& context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status OutOfRange(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status PermissionDenied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status Aborted(std::string m) { return {StatusCode::kAborted, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

namespace internal {
// Prints "StatusOr::value() on an error: <status>" to stderr and aborts.
[[noreturn]] void DieOnBadAccess(const Status& status);
}  // namespace internal

// Holds either a value of T or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const T& value) : value_(value) {}             // NOLINT: implicit by design
  StatusOr(T&& value) : value_(std::move(value)) {}       // NOLINT
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT
    // REQUIRES: !status.ok(); an OK status without a value is a bug.
    if (status_.ok()) status_ = Internal("StatusOr constructed from OK status without a value");
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  // REQUIRES: ok(). Otherwise aborts with the status message, in every
  // build (not only with assertions on).
  T& value() & {
    CheckOk();
    return *value_;
  }
  const T& value() const& {
    CheckOk();
    return *value_;
  }
  T&& value() && {
    CheckOk();
    return std::move(*value_);
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void CheckOk() const {
    if (!status_.ok()) internal::DieOnBadAccess(status_);
  }
  Status status_;
  std::optional<T> value_;
};

}  // namespace flotilla

#define FLOTILLA_CONCAT_INNER(a, b) a##b
#define FLOTILLA_CONCAT(a, b) FLOTILLA_CONCAT_INNER(a, b)

// Returns from the current function if `expr` (a Status) is not OK.
// (The variable is named after the line, so that a RETURN_IF_ERROR inside
// a lambda passed to another one does not shadow it.)
#define RETURN_IF_ERROR(expr) RETURN_IF_ERROR_IMPL(FLOTILLA_CONCAT(_flotilla_st_, __LINE__), expr)
#define RETURN_IF_ERROR_IMPL(st, expr) \
  do {                                 \
    ::flotilla::Status st = (expr);    \
    if (!st.ok()) return st;           \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` declares x from a StatusOr or returns
// its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(FLOTILLA_CONCAT(_flotilla_sor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
