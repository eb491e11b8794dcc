// The loop every maintenance tool runs over the mailboxes it was given (nestbox-reconstruct,
// nestbox-purge): a progress line on standard error while it is a terminal, report lines on
// standard output that first clear that line, and one failure per mailbox caught, kept for the
// exit status and the JSON report, and shown on standard error (unless the report is JSON) so
// that the others are still worked on.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public final class MailboxLoop {
    /// The failures, by mailbox name, in the order met.
    public private(set) var errors: [(mailbox: String, failure: NestboxFailure)] = []
    let json: Bool
    let progress: Bool
    let count: Int

    /// `count` mailboxes; with `json` nothing is printed here but the progress line (not even
    /// that: JSON is for programs).
    public init(count: Int, json: Bool) {
        self.count = count
        self.json = json
        progress = !json && isatty(2) != 0 && count > 1
    }

    /// Runs `body` for the `index`-th mailbox `name`, showing it on the progress line; a
    /// failure is kept and shown, and the loop goes on.
    public func each(_ index: Int, _ name: String, _ body: () throws -> Void) {
        if progress { fputs("\r\u{1B}[K[\(index + 1)/\(count)] \(name)", stderr) }
        do {
            try body()
        } catch {
            let f = (error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)")
            errors.append((name, f))
            if !json { warn("\(name): \(f.outcome.dsnLine): \(f.detail)") }
        }
    }

    /// A report line on standard output.
    public func say(_ text: String) {
        if progress { fputs("\r\u{1B}[K", stderr) }
        fputs(text, stdout)
        fputc(10, stdout)
        // Line by line only beside a progress display: one write per line costs as much as the
        // rest of a repair that reports every message of a large folder.
        if progress { fflush(stdout) }
    }

    /// A line on standard error.
    public func warn(_ text: String) {
        if progress { fputs("\r\u{1B}[K", stderr) }
        fputs(text + "\n", stderr)
    }

    /// Clears the progress line and names the mailboxes that were not found.
    public func end(unknown: [String]) {
        if progress { fputs("\r\u{1B}[K", stderr) }
        for name in unknown where !json { fputs("\(name): no such mailbox\n", stderr) }
    }

    /// The failures as a JSON list of {mailbox, status, error}.
    public var errorsJSON: String {
        "[" + errors.map {
            "{\"mailbox\":\(jsonString($0.mailbox)),\"status\":\(jsonString($0.failure.outcome.status)),\"error\":\(jsonString($0.failure.detail))}"
        }.joined(separator: ",") + "]"
    }
}
