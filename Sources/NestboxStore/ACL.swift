// dovecot-acl: who may do what with a folder (RFC 4314 rights). One file per folder; the
// root's applies to INBOX. Lines `<identifier> <rights>`; `#` comments; a `-` before the
// identifier makes the rights negative. Identifiers: `user=<name>`, `group=<name>`, `owner`,
// `authenticated`, `anyone` (also `anonymous`). Delivery needs `p` (post); the owner of a
// personal folder always has it.

import NestboxSupport

public struct ACL: Equatable, Sendable {
    public static let fileName = "dovecot-acl"

    public struct Entry: Equatable, Sendable {
        public var identifier: String
        public var rights: Set<Character>
        public var negative: Bool
    }

    public var entries: [Entry] = []

    public init(entries: [Entry] = []) { self.entries = entries }

    public static func parse(_ text: String) -> ACL {
        var acl = ACL()
        for raw in text.textLines(omittingEmpty: true) {
            let line = raw.trimmingSpaces()
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let space = line.lastIndex(where: { $0 == " " || $0 == "\t" }) else { continue }
            var id = String(line[..<space]).trimmingSpaces()
            let rights = Set(line[line.index(after: space)...].filter { $0.isLetter })
            var negative = false
            if id.hasPrefix("-") {
                negative = true
                id.removeFirst()
            }
            acl.entries.append(Entry(identifier: id, rights: rights, negative: negative))
        }
        return acl
    }

    public static func read(folder: String) throws -> ACL {
        guard let bytes = try Files.read("\(folder)/\(fileName)", limit: 1 << 20) else { return ACL() }
        return parse(String(decoding: bytes, as: UTF8.self))
    }

    /// The rights of `identity` (nil: anonymous). `owner` names the folder's owner, if any.
    public func rights(for identity: String?, owner: String?) -> Set<Character> {
        var granted = Set<Character>(), denied = Set<Character>()
        for e in entries {
            let applies: Bool
            switch e.identifier {
            case "anyone", "anonymous": applies = true
            case "authenticated": applies = identity != nil
            case "owner": applies = identity != nil && identity == owner
            default:
                if e.identifier.hasPrefix("user=") { applies = identity != nil && String(e.identifier.dropFirst(5)) == identity }
                else { applies = false }  // groups are not known to delivery
            }
            guard applies else { continue }
            if e.negative { denied.formUnion(e.rights) } else { granted.formUnion(e.rights) }
        }
        return granted.subtracting(denied)
    }

    /// Whether `identity` may deliver into the folder.
    public func mayPost(_ identity: String?, owner: String?) -> Bool {
        if let identity, identity == owner { return true }
        return rights(for: identity, owner: owner).contains("p")
    }
}
