// The two dates of an mbox message, without Foundation.
//
// - The From_ line: `From <sender> <asctime>`, as Postfix (two spaces after the sender), Dovecot
//   and c-client (one) write it: `Thu Nov 26 10:00:00 2026`, also with the seconds left out, a
//   zone before or after the year (`+0200`, `EET`), and UUCP's ` remote from <host>` after it.
//   Without a numeric zone the time is local time (mktime), as Dovecot's mbox-from.c reads it
//   and as Postfix writes it. A line counts as a message separator only when this parse
//   succeeds (Dovecot's rule): a `From ` body line that is not a From_ line stays in its message.
// - The Date: header: RFC 5322 section 3.3 with the obsolete forms of 4.3 (two- and three-digit
//   years, zone names UT GMT EST EDT CST CDT MST MDT PST PDT; military and unknown names mean
//   -0000), comments and folding allowed.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

enum MboxDate {
    static let weekdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    static let months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    static let zones: [String: Int] = ["ut": 0, "utc": 0, "gmt": 0, "z": 0, "est": -300, "edt": -240,
                                       "cst": -360, "cdt": -300, "mst": -420, "mdt": -360, "pst": -480, "pdt": -420]

    static func month(_ s: Substring) -> Int? {
        guard s.count >= 3 else { return nil }
        return months.firstIndex(of: s.prefix(3).lowercased())
    }

    static func isWeekday(_ s: Substring) -> Bool {
        s.count >= 3 && weekdays.contains(s.prefix(3).lowercased())
    }

    /// `+hhmm` / `-hhmm` in minutes east of UTC.
    static func numericZone(_ s: Substring) -> Int? {
        guard s.count == 5, let sign = s.first, sign == "+" || sign == "-",
              let v = Int(s.dropFirst()) else { return nil }
        let minutes = (v / 100) * 60 + v % 100
        return sign == "-" ? -minutes : minutes
    }

    /// `hh:mm[:ss]`
    static func time(_ s: Substring) -> (Int, Int, Int)? {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3, let h = Int(parts[0]), let m = Int(parts[1]),
              (0...23).contains(h), (0...59).contains(m) else { return nil }
        var sec = 0
        if parts.count == 3 {
            guard let s = Int(parts[2]), (0...60).contains(s) else { return nil }
            sec = s
        }
        return (h, m, sec)
    }

    static func fullYear(_ s: Substring) -> Int? {
        guard !s.isEmpty, s.allSatisfy(\.isNumber), let y = Int(s) else { return nil }
        if s.count == 2 { return y < 50 ? 2000 + y : 1900 + y }
        if s.count == 3 { return 1900 + y }
        return y
    }

    /// Seconds since the epoch; `zone` in minutes east of UTC, nil for local time.
    static func epoch(year: Int, month: Int, day: Int, time: (Int, Int, Int), zone: Int?) -> Int64? {
        guard (1...31).contains(day), year >= 1900 else { return nil }
        var tm = Glibc.tm()
        tm.tm_year = Int32(year - 1900)
        tm.tm_mon = Int32(month)
        tm.tm_mday = Int32(day)
        tm.tm_hour = Int32(time.0)
        tm.tm_min = Int32(time.1)
        tm.tm_sec = Int32(time.2)
        if let zone {
            return Int64(timegm(&tm)) - Int64(zone) * 60
        }
        tm.tm_isdst = -1
        return Int64(mktime(&tm))
    }

    /// The text after `From ` of a From_ line: the envelope sender and the date, nil when the
    /// line has no date where one must be.
    static func parseFromLine(_ rest: Substring) -> (sender: String, date: Int64)? {
        let tokens = rest.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard tokens.count >= 5 else { return nil }
        for i in 0...(tokens.count - 5) {
            guard isWeekday(tokens[i]), tokens[i].count == 3, let mon = month(tokens[i + 1]),
                  tokens[i + 1].count == 3, let day = Int(tokens[i + 2]), let t = time(tokens[i + 3]) else { continue }
            var zone: Int? = nil
            var year: Int? = nil
            if let y = fullYear(tokens[i + 4]), tokens[i + 4].count == 4 || tokens[i + 4].count == 2 {
                year = y
                if i + 5 < tokens.count, let z = numericZone(tokens[i + 5]) { zone = z }
            } else if i + 5 < tokens.count, let y = fullYear(tokens[i + 5]) {
                // A zone between the time and the year: numeric is used, a name means local time.
                year = y
                zone = numericZone(tokens[i + 4])
            }
            guard let year, let date = epoch(year: year, month: mon, day: day, time: t, zone: zone) else { continue }
            return (tokens[..<i].joined(separator: " "), date)
        }
        return nil
    }

    /// An RFC 5322 date (the value of a Date: header, unfolded or not).
    static func parseRFC5322(_ value: String) -> Int64? {
        // Comments out, commas become spaces.
        var text = ""
        var depth = 0
        for c in value {
            if c == "(" { depth += 1; continue }
            if c == ")" { depth = max(0, depth - 1); continue }
            if depth > 0 { continue }
            text.append(c == "," || c == "\r" || c == "\n" || c == "\t" ? " " : c)
        }
        var tokens = text.split(separator: " ")[...]
        if let first = tokens.first, isWeekday(first), first.allSatisfy(\.isLetter) { tokens = tokens.dropFirst() }
        guard tokens.count >= 4 else { return nil }
        let a = tokens[tokens.startIndex], b = tokens[tokens.startIndex + 1]
        let day: Int, mon: Int
        if let d = Int(a), let m = month(b) {
            day = d; mon = m
        } else if let m = month(a), let d = Int(b) {  // "Nov 26 2026" (seen in the wild)
            day = d; mon = m
        } else { return nil }
        guard let year = fullYear(tokens[tokens.startIndex + 2]),
              let t = time(tokens[tokens.startIndex + 3]) else { return nil }
        var zone = 0
        if tokens.count >= 5 {
            let z = tokens[tokens.startIndex + 4]
            zone = numericZone(z) ?? zones[z.lowercased()] ?? 0
        }
        return epoch(year: year, month: mon, day: day, time: t, zone: zone)
    }
}

/// The header fields of one message that purge and its callers need, unfolded.
struct MboxHeaders {
    var fields: [String: String] = [:]  // lowercased name -> first value

    static let wanted: Set<String> = ["date", "subject", "status", "x-status", "x-imap", "x-imapbase",
                                      "x-uid", "x-keywords", "message-id"]

    /// Parses the header lines of `bytes[range]` up to the first empty line.
    init(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) {
        var i = range.lowerBound
        var name: String? = nil
        var value: [UInt8] = []
        func flush() {
            if let n = name, fields[n] == nil {
                var v = String(decoding: value, as: UTF8.self)
                while let f = v.first, f == " " || f == "\t" { v.removeFirst() }
                while let l = v.last, l == " " || l == "\t" || l == "\r" { v.removeLast() }
                fields[n] = v
            }
            name = nil
            value = []
        }
        while i < range.upperBound {
            var end = i
            while end < range.upperBound && bytes[end] != 0x0A { end += 1 }
            if end == i || (end == i + 1 && bytes[i] == 0x0D) { break }  // the empty line
            if bytes[i] == 0x20 || bytes[i] == 0x09 {
                if name != nil { value.append(0x20); value.append(contentsOf: bytes[i..<end]) }
            } else {
                flush()
                if let colon = bytes[i..<end].firstIndex(of: 0x3A) {
                    let n = String(decoding: bytes[i..<colon], as: UTF8.self).lowercased()
                    if MboxHeaders.wanted.contains(n) {
                        name = n
                        value = Array(bytes[(colon + 1)..<end])
                    }
                }
            }
            i = end + 1
        }
        flush()
    }

    subscript(_ name: String) -> String? { fields[name] }
}
