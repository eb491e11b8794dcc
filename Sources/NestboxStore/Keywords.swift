// dovecot-keywords: the names behind the keyword letters a..z of one folder.
// Lines `<index> <name>`, index 0..25 = letters a..z; names compare case-insensitively; at most
// 26 per folder. Written under the folder's uidlist lock, through a temporary file and rename,
// with an mtime that always increases (Dovecot rereads the file when its mtime changes).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct Keywords: Equatable, Sendable {
    public static let fileName = "dovecot-keywords"
    public static let maxCount = 26

    /// names[i] is the keyword of letter a + i (nil: unused index).
    public var names: [String?] = Array(repeating: nil, count: maxCount)

    public init() {}

    public static func parse(_ text: String) -> Keywords {
        var k = Keywords()
        for line in text.textLines(omittingEmpty: true) {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, let i = Int(parts[0]), i >= 0, i < maxCount else { continue }
            let name = String(parts[1]).trimmingSpaces()
            if !name.isEmpty { k.names[i] = name }
        }
        return k
    }

    public func serialized() -> String {
        var out = ""
        for (i, n) in names.enumerated() { if let n { out += "\(i) \(n)\n" } }
        return out
    }

    public static func letter(_ index: Int) -> Character { Character(Unicode.Scalar(UInt8(ascii: "a") + UInt8(index))) }

    public func name(of letter: Character) -> String? {
        guard let v = letter.asciiValue, v >= UInt8(ascii: "a"), v <= UInt8(ascii: "z") else { return nil }
        return names[Int(v - UInt8(ascii: "a"))]
    }

    public func letter(of name: String) -> Character? {
        let lower = name.lowercased()
        guard let i = names.firstIndex(where: { $0?.lowercased() == lower }) else { return nil }
        return Keywords.letter(i)
    }

    /// The letter of `name`, adding it if there is room. nil when all 26 are taken.
    public mutating func letterAdding(_ name: String) -> Character? {
        if let l = letter(of: name) { return l }
        guard let free = names.firstIndex(where: { $0 == nil }) else { return nil }
        names[free] = name
        return Keywords.letter(free)
    }

    public static func read(folder: String) throws -> Keywords {
        guard let bytes = try Files.read("\(folder)/\(fileName)", limit: 1 << 20) else { return Keywords() }
        return parse(String(decoding: bytes, as: UTF8.self))
    }

    /// Writes the file; the caller holds the folder's uidlist lock.
    public func writeLocked(folder: String) throws {
        let path = "\(folder)/\(Keywords.fileName)"
        let old = try Files.status(path)
        try Files.replace(path, with: Array(serialized().utf8))
        if let old, let new = try Files.status(path), new.st_mtim.tv_sec <= old.st_mtim.tv_sec {
            var times = [timespec(tv_sec: old.st_mtim.tv_sec + 1, tv_nsec: 0), timespec(tv_sec: old.st_mtim.tv_sec + 1, tv_nsec: 0)]
            utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW)
        }
    }
}
