// IMAP modified UTF-7 (RFC 3501 section 5.1.3), the form folder names take on disk in a
// Dovecot Maildir++ store: printable ASCII stands for itself except `&`, written `&-`; any other
// run of characters is `&` + base64 of its UTF-16BE with `,` for `/` and no padding + `-`.

public enum ModifiedUTF7 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,".utf8)

    public static func encode(_ text: String) -> String {
        var out: [UInt8] = []
        var pending: [UInt16] = []
        func flush() {
            guard !pending.isEmpty else { return }
            var bytes: [UInt8] = []
            for unit in pending { bytes.append(UInt8(unit >> 8)); bytes.append(UInt8(unit & 0xff)) }
            out.append(UInt8(ascii: "&"))
            var i = 0
            while i < bytes.count {
                let b0 = bytes[i], b1 = i + 1 < bytes.count ? bytes[i + 1] : 0, b2 = i + 2 < bytes.count ? bytes[i + 2] : 0
                out.append(alphabet[Int(b0 >> 2)])
                out.append(alphabet[Int((b0 & 3) << 4 | b1 >> 4)])
                if i + 1 < bytes.count { out.append(alphabet[Int((b1 & 15) << 2 | b2 >> 6)]) }
                if i + 2 < bytes.count { out.append(alphabet[Int(b2 & 63)]) }
                i += 3
            }
            out.append(UInt8(ascii: "-"))
            pending.removeAll()
        }
        for scalar in text.unicodeScalars {
            if scalar.value >= 0x20 && scalar.value <= 0x7e {
                flush()
                out.append(UInt8(scalar.value))
                if scalar == "&" { out.append(UInt8(ascii: "-")) }
            } else {
                pending.append(contentsOf: Array(String(scalar).utf16))
            }
        }
        flush()
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes; nil for anything that is not valid modified UTF-7.
    public static func decode(_ text: String) -> String? {
        var out = ""
        let bytes = Array(text.utf8)
        var i = 0
        while i < bytes.count {
            let c = bytes[i]
            guard c >= 0x20 && c <= 0x7e else { return nil }
            if c != UInt8(ascii: "&") {
                out.unicodeScalars.append(Unicode.Scalar(c))
                i += 1
                continue
            }
            guard let end = bytes[(i + 1)...].firstIndex(of: UInt8(ascii: "-")) else { return nil }
            if end == i + 1 {
                out.append("&")
                i = end + 1
                continue
            }
            var bits: UInt32 = 0, nbits = 0
            var units: [UInt16] = []
            var bytesOut: [UInt8] = []
            for b in bytes[(i + 1)..<end] {
                guard let v = alphabet.firstIndex(of: b) else { return nil }
                bits = bits << 6 | UInt32(v)
                nbits += 6
                if nbits >= 8 {
                    nbits -= 8
                    bytesOut.append(UInt8((bits >> UInt32(nbits)) & 0xff))
                }
            }
            guard bytesOut.count % 2 == 0, !bytesOut.isEmpty else { return nil }
            for k in stride(from: 0, to: bytesOut.count, by: 2) { units.append(UInt16(bytesOut[k]) << 8 | UInt16(bytesOut[k + 1])) }
            var decoded = ""
            var iterator = units.makeIterator()
            var utf16 = UTF16()
            loop: while true {
                switch utf16.decode(&iterator) {
                case .scalarValue(let s):
                    // Printable ASCII must not be encoded (RFC 3501): reject to keep one spelling.
                    if s.value >= 0x20 && s.value <= 0x7e { return nil }
                    decoded.unicodeScalars.append(s)
                case .emptyInput: break loop
                case .error: return nil
                }
            }
            out += decoded
            i = end + 1
        }
        return out
    }
}
