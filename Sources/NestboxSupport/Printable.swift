// Untrusted text (a recipient, a folder name, a command-line word) as a log line or an error
// message may show it: one line, ASCII, bounded.

/// Control characters, non-ASCII bytes, `\` and `"` as `\xNN`; cut at 100 bytes with `...`.
public func printable(_ s: String) -> String {
    let hex = Array("0123456789abcdef")
    var out = ""
    for b in s.utf8.prefix(100) {
        if b < 0x20 || b >= 0x7f || b == UInt8(ascii: "\\") || b == UInt8(ascii: "\"") {
            out += "\\x" + String(hex[Int(b >> 4)]) + String(hex[Int(b & 15)])
        } else {
            out.unicodeScalars.append(Unicode.Scalar(b))
        }
    }
    return s.utf8.count > 100 ? out + "..." : out
}
