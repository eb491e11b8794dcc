// Byte spans: names kept as ranges of one growing byte array (an "arena") instead of one String
// each, for the scans that handle every file name and every uidlist record of a folder
// (nestbox-reconstruct reads 100k of each). A String per name costs an allocation, a reference
// count on every copy, and Unicode-aware hashing and comparison; a span is two integers, hashed
// and compared with the bytes themselves. Maildir names are compared as bytes everywhere (Dovecot
// does the same), so nothing is lost.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The bytes `start..<end` of an arena.
struct Span: Equatable {
    var start: Int32
    var end: Int32

    init(_ start: Int, _ end: Int) {
        self.start = Int32(start)
        self.end = Int32(end)
    }

    var count: Int { Int(end - start) }
    var isEmpty: Bool { end == start }
}

extension Array where Element == UInt8 {
    /// Appends `bytes` and returns their span.
    mutating func appendSpan<C: Collection>(_ bytes: C) -> Span where C.Element == UInt8 {
        let start = count
        append(contentsOf: bytes)
        return Span(start, count)
    }

    func string(_ s: Span) -> String {
        String(decoding: self[Int(s.start)..<Int(s.end)], as: UTF8.self)
    }

    /// The first `byte` in `s`, or nil.
    func firstIndex(of byte: UInt8, in s: Span) -> Int? {
        guard !s.isEmpty else { return nil }
        return withUnsafeBufferPointer { buf in
            let start = UnsafeRawPointer(buf.baseAddress! + Int(s.start))
            guard let hit = memchr(start, Int32(byte), s.count) else { return nil }
            return Int(s.start) + (UnsafeRawPointer(hit) - start)
        }
    }

    /// memcmp order of two spans (shorter first on a common prefix): the order of Swift's `<`
    /// on the names when they are ASCII, as Maildir names are.
    func compare(_ a: Span, _ b: Span) -> Int32 {
        withUnsafeBufferPointer { buf in
            let base = buf.baseAddress!
            let n = Swift.min(a.count, b.count)
            let c = n == 0 ? 0 : memcmp(base + Int(a.start), base + Int(b.start), n)
            if c != 0 { return c }
            return a.count < b.count ? -1 : (a.count > b.count ? 1 : 0)
        }
    }

    func equal(_ a: Span, _ b: Span) -> Bool {
        a.count == b.count && compare(a, b) == 0
    }

    /// A `,<key>=<digits>` field after the first `,` of `s` (MaildirName.field on bytes).
    func maildirField(_ key: UInt8, in s: Span) -> Int64? {
        guard var start = firstIndex(of: UInt8(ascii: ","), in: s).map({ $0 + 1 }) else { return nil }
        let stop = Int(s.end)
        while true {
            let end = firstIndex(of: UInt8(ascii: ","), in: Span(start, stop)) ?? stop
            if end - start >= 3, self[start] == key, self[start + 1] == UInt8(ascii: "=") {
                switch MaildirName.decimal(self[(start + 2)..<end]) {
                case .value(let v): return v
                case .overflow: return nil
                case .notDigits: break
                }
            }
            if end == stop { return nil }
            start = end + 1
        }
    }

    /// Appends the decimal digits of `value`.
    mutating func appendDecimal(_ value: UInt32) {
        if value >= 10 { appendDecimal(value / 10) }
        append(UInt8(48 + value % 10))
    }
}

/// The distinct byte strings among spans of one arena, each numbered by a dense slot (0, 1, ...
/// in the order first added). Open addressing with linear probing over FNV-1a hashes.
struct SpanTable {
    /// The first span added for each slot.
    private(set) var spans: [Span] = []
    private var hashes: [UInt64] = []
    private var slots: [Int32]
    private var mask: Int

    init(capacity: Int) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        slots = [Int32](repeating: -1, count: size)
        mask = size - 1
        spans.reserveCapacity(capacity)
        hashes.reserveCapacity(capacity)
    }

    var count: Int { spans.count }

    /// Eight bytes at a time, multiplied and folded (the names share long prefixes, so every
    /// byte must count; the table is not exposed to chosen keys beyond what a mailbox holds).
    static func hash(_ s: Span, in arena: [UInt8]) -> UInt64 {
        arena.withUnsafeBytes { raw in
            var h: UInt64 = 0x9e37_79b9_7f4a_7c15 ^ UInt64(s.count)
            var i = Int(s.start)
            let end = Int(s.end)
            while i + 8 <= end {
                h = (h ^ raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0xff51_afd7_ed55_8ccd
                h ^= h >> 32
                i += 8
            }
            var tail: UInt64 = 0
            var shift: UInt64 = 0
            while i < end {
                tail |= UInt64(raw[i]) << shift
                shift += 8
                i += 1
            }
            h = (h ^ tail) &* 0xc4ce_b9fe_1a85_ec53
            return h ^ (h >> 29)
        }
    }

    /// The slot of the bytes of `s`, nil when absent.
    func find(_ s: Span, in arena: [UInt8]) -> Int? {
        let h = SpanTable.hash(s, in: arena)
        var i = Int(truncatingIfNeeded: h) & mask
        while true {
            let slot = slots[i]
            if slot < 0 { return nil }
            if hashes[Int(slot)] == h && arena.equal(spans[Int(slot)], s) { return Int(slot) }
            i = (i + 1) & mask
        }
    }

    /// The slot of the bytes of `s`, given a new one when they are not in the table yet.
    mutating func insert(_ s: Span, in arena: [UInt8]) -> (slot: Int, added: Bool) {
        let h = SpanTable.hash(s, in: arena)
        var i = Int(truncatingIfNeeded: h) & mask
        while true {
            let slot = slots[i]
            if slot < 0 { break }
            if hashes[Int(slot)] == h && arena.equal(spans[Int(slot)], s) { return (Int(slot), false) }
            i = (i + 1) & mask
        }
        let new = spans.count
        spans.append(s)
        hashes.append(h)
        slots[i] = Int32(new)
        if spans.count * 2 > slots.count { grow() }
        return (new, true)
    }

    private mutating func grow() {
        slots = [Int32](repeating: -1, count: slots.count * 2)
        mask = slots.count - 1
        for (n, h) in hashes.enumerated() {
            var i = Int(truncatingIfNeeded: h) & mask
            while slots[i] >= 0 { i = (i + 1) & mask }
            slots[i] = Int32(n)
        }
    }
}
