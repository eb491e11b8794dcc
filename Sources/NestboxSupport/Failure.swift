#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An error with two audiences: `outcome` is what the client sees (a row of the outcome table,
/// possibly with a more precise text), `detail` is for the log: the operation, the object and
/// the reason, in the Postfix manner ("fsync /var/spool/x/new: Input/output error").
public struct NestboxFailure: Error, Sendable, CustomStringConvertible {
    public var outcome: Outcome
    public var detail: String

    public init(_ outcome: Outcome, _ detail: String) {
        self.outcome = outcome
        self.detail = detail
    }

    public var description: String { detail }

    /// A failed system call on `path`: disk full and quota-exceeded errors become "4.3.1
    /// Insufficient system storage", everything else a temporary local error.
    public static func system(_ operation: String, _ path: String, errno code: Int32 = errno) -> NestboxFailure {
        let reason = errnoText(code)
        let row: Outcome = (code == ENOSPC || code == EDQUOT) ? .diskFull : .temporary
        return NestboxFailure(row, "\(operation) \(path): \(reason)")
    }
}

/// strerror(3) as a Swift string.
public func errnoText(_ code: Int32) -> String {
    guard let text = strerror(code) else { return "error \(code)" }
    return String(cString: text)
}
