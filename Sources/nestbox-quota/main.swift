// nestbox-quota: reports, fixes and sets the Maildir++ quotas (`maildirsize`) that deliveries
// and Dovecot's quota=maildir both enforce (Cyrus `quota` command line). Arguments and
// configuration in, privileges dropped, then one of:
//   report   the quota roots in Cyrus's layout (or --json, --format prometheus), by use;
//   -f       usage counted again from the files under every folder's uidlist lock and written
//            when it differs (each change on standard error); with -n nothing is written;
//   --set    limits written to line 1 of maildirsize for users, a domain or the default.
// Exit status: 0 done, 1 with -f -n when something would change, 64 usage, 67 unknown user,
// 75 temporary failure (a lock not had), 78 configuration. See man/nestbox-quota.8.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxStore
import NestboxSupport

let spec = OptionSpec(
    program: "nestbox-quota", version: "0.1.0", operands: "[root...]",
    otherForms: ["[options] -f [-n] [-q] [root...]", "[options] --set LIMITS {root... | -d domain | --default}",
                 "[options] set {root | -d domain | --default} [STORAGE KiB|none] [MESSAGE n|none]"],
    summary: """
    Reports the quota roots (users' maildirsize) with their limits and usage, recomputes usage
    from the files (-f), or sets limits that Nestbox deliveries and Dovecot both enforce.
    Roots are named as in Cyrus (user/alice, user/bob@example.org), with * and %.
    """,
    options: [
        Tool.configFile,
        Tool.override,
        .flag("f", name: "fix", help: "count usage again from the files and fix maildirsize"),
        .flag("n", name: "dry-run", help: "with -f: report what would change, write nothing"),
        .flag("q", name: "quiet", help: "print only changes and errors"),
        .value("d", name: "domain", "domain", help: "every user of this domain (with --set: also its mailboxes created later)"),
        .flag("u", name: "users", help: "the arguments are user names (alice, bob@example.org)"),
        .flag(long: "all", name: "all", help: "every user, with a quota or not"),
        .flag("J", long: "json", name: "json", help: "print one JSON report on standard output"),
        .value(long: "format", name: "format", "text|prometheus", help: "report format; prometheus: node_exporter textfile gauges"),
        .value(long: "set", name: "set", "LIMITS", help: "STORAGE=KiB,MESSAGE=n (either; `none` for no limit, or just none)"),
        .flag(long: "default", name: "default", help: "with --set: the limits of every user and of mailboxes created later"),
        Tool.logToStandardError,
    ],
    epilogue: """
    Exit status: 0 done, 1 (-f -n) something would change, 64 usage, 67 unknown user,
    75 temporary failure, 78 configuration error (see nestbox-quota(8)).
    """)

let tool = Tool(spec, reporting: .standardError).start()
let config = tool.config
let parsed = tool.options
var operands = parsed.operands

// MARK: Options

/// A change of limits: per resource, nil keeps it, .some(nil) removes it.
struct LimitChange {
    var storage: Int64?? = nil
    var messages: Int64?? = nil

    /// `STORAGE=102400,MESSAGE=1000`, `STORAGE=none`, `none`; commas or spaces between.
    static func parse(_ words: [String]) -> LimitChange? {
        var change = LimitChange()
        var items: [(String, String)] = []
        var pending: String? = nil
        for word in words.flatMap({ $0.split(whereSeparator: { $0 == "," || $0 == " " }) }).map(String.init) {
            if let key = pending {
                items.append((key, word))
                pending = nil
            } else if let eq = word.firstIndex(of: "=") {
                items.append((String(word[..<eq]), String(word[word.index(after: eq)...])))
            } else if word.lowercased() == "none" && items.isEmpty && pending == nil {
                change.storage = .some(nil)
                change.messages = .some(nil)
            } else {
                pending = word
            }
        }
        if pending != nil { return nil }
        for (key, value) in items {
            let v: Int64?
            if value.lowercased() == "none" {
                v = nil
            } else {
                guard let n = Int64(value), n >= 0 else { return nil }
                v = n == 0 ? nil : n
            }
            switch key.uppercased() {
            case "STORAGE": change.storage = .some(v.map { $0 * 1024 })
            case "MESSAGE", "MESSAGES": change.messages = .some(v)
            default: return nil
            }
        }
        return change.storage == nil && change.messages == nil ? nil : change
    }

    func applied(to old: QuotaLimits?) -> QuotaLimits {
        var l = old ?? QuotaLimits()
        if let s = storage { l.bytes = s }
        if let m = messages { l.messages = m }
        if l.bytes == 0 { l.bytes = nil }
        if l.messages == 0 { l.messages = nil }
        return l
    }
}

// `set ROOT STORAGE 102400 MESSAGE 1000` (cyradm's setquota order) is --set spelled as words.
var change: LimitChange? = nil
if operands.first == "set" {
    if parsed.has("set") { tool.usageError("give the limits either with --set or after `set`, not both") }
    operands.removeFirst()
    let targets = parsed.has("domain") || parsed.has("default") ? 0 : 1
    guard operands.count > targets else { tool.usageError("set: which root, and which limits (STORAGE KiB, MESSAGE n, none)?") }
    guard let c = LimitChange.parse(Array(operands.dropFirst(targets))) else {
        tool.usageError("set: limits must be STORAGE <KiB>, MESSAGE <count> or none, got \"\(operands.dropFirst(targets).joined(separator: " "))\"")
    }
    change = c
    operands = Array(operands.prefix(targets))
} else if let text = parsed.value("set") {
    guard let c = LimitChange.parse([text]) else {
        tool.usageError("--set: limits must be STORAGE=<KiB>, MESSAGE=<count> or none, got \"\(text)\"")
    }
    change = c
}
let fix = parsed.has("fix")
let dryRun = parsed.has("dry-run")
let quiet = parsed.has("quiet")
let json = parsed.has("json")
let format = parsed.value("format") ?? "text"
if !["text", "prometheus"].contains(format) { tool.usageError("--format: text or prometheus, got \"\(format)\"") }
if json && format == "prometheus" { tool.usageError("--json and --format prometheus: choose one") }
if dryRun && !fix { tool.usageError("-n goes with -f (a report changes nothing anyway)") }
if change != nil && fix { tool.usageError("--set and -f: one at a time") }
if parsed.has("default") && change == nil { tool.usageError("--default goes with --set") }
if parsed.has("default") && (parsed.has("domain") || !operands.isEmpty) { tool.usageError("--default sets every user's limits: no root or -d with it") }
if change != nil && operands.isEmpty && !parsed.has("domain") && !parsed.has("default") && !parsed.has("all") {
    tool.usageError("--set: which roots (or -d domain, --default)?")
}
if parsed.has("all") && !operands.isEmpty { tool.usageError("--all takes no root names") }
tool.dropPrivileges()

let store = MailStore(config: config)
let names = MailboxNames(config: config)
let separator = String(names.separator)

// MARK: Which roots

struct Root {
    var name: String
    var owner: MailboxOwner
    var quota: QuotaRoot
}

var roots: [Root] = []
var unknown: [String] = []
var seen = Set<String>()
func add(_ owner: MailboxOwner) {
    guard seen.insert(owner.root).inserted else { return }
    let inbox = Folder(path: owner.root, mailRoot: owner.root, name: "INBOX")
    let name = names.canonicalName(owner, inbox) ?? (owner.domain.map { "\(MailStore.sharedUser)@\($0)" } ?? MailStore.sharedUser)
    roots.append(Root(name: name, owner: owner, quota: config.quotaRoot(owner.root)))
}

let domain = parsed.value("domain")?.lowercased()
tool.orFail {
    let users = try names.mailRoot.users()
    if let domain {
        // The default domain's users live in the domain-less area.
        let area: String? = config.virtDomains == .off || domain == config.defaultDomain ? nil : domain
        let found = users.filter { $0.domain == area }
        if found.isEmpty && change == nil { unknown.append("-d \(domain)") }
        found.forEach(add)
    }
    if parsed.has("all") || parsed.has("default") {
        users.forEach(add)
        if !parsed.has("default") { try names.mailRoot.sharedAreas().forEach(add) }
    }
    for operand in operands {
        let typed = parsed.has("users") ? MailboxNames.userPrefix + separator + operand : operand
        let found = try names.resolve(typed)
        if found.isEmpty { unknown.append(operand) }
        for m in found { add(m.owner) }
    }
    if operands.isEmpty && domain == nil && !parsed.has("all") && !parsed.has("default") {
        // As Cyrus: every quota root (the users and shared areas with a maildirsize).
        for owner in try users + names.mailRoot.sharedAreas() where Files.exists("\(owner.root)/\(MaildirSize.fileName)") {
            add(owner)
        }
    }
}

let loop = MailboxLoop(count: roots.count, json: json || format == "prometheus")

// MARK: Setting limits

if let change {
    if parsed.has("default") || domain != nil {
        tool.orFail {
            let defaults = QuotaDefaults(store: store)
            let area: String? = domain.flatMap { config.virtDomains == .off || $0 == config.defaultDomain ? nil : $0 }
            let new = change.applied(to: try defaults.stored(domain: area))
            try defaults.set(new.bytes == nil && new.messages == nil && area != nil ? nil : new, domain: area)
            if !quiet && !json { print("\(domain.map { "domain \($0)" } ?? "default"): \(describe(new)) for mailboxes created later") }
        }
    }
    for (i, r) in roots.enumerated() {
        loop.each(i, r.name) {
            let old = try r.quota.status()?.limits
            let new = change.applied(to: old)
            try r.quota.recalculateLocked(limits: new, options: tool.lockPolicy)
            if !quiet && !json { loop.say("\(r.name): \(describe(new))") }
        }
    }
    loop.end(unknown: unknown)
    finish()
}

func describe(_ l: QuotaLimits) -> String {
    let s = l.bytes.map { "STORAGE \($0 / 1024) KiB" } ?? "STORAGE no limit"
    let m = l.messages.map { "MESSAGE \($0)" } ?? "MESSAGE no limit"
    return "\(s), \(m)"
}

// MARK: Counting (-f) and reading

struct Row {
    var root: Root
    var limits: QuotaLimits
    var usage: QuotaUsage
    var hasFile: Bool
    /// Storage in KiB as Dovecot's `doveadm quota get` shows it: rounded up, and its
    /// percentage computed from the KiB figures, so that both tools print the same numbers.
    var usedKiB: Int64 { (usage.bytes + 1023) / 1024 }
    var limitKiB: Int64? { limits.bytes.map { ($0 + 1023) / 1024 } }
    var storagePercent: Int64 { l(usedKiB, limitKiB) }
    var messagePercent: Int64 { l(usage.messages, limits.messages) }
    /// Highest percentage of a limit used, -1 without limits.
    var percent: Int64 { max(storagePercent, messagePercent) }
    func l(_ used: Int64, _ limit: Int64?) -> Int64 {
        guard let limit, limit > 0 else { return -1 }
        return used * 100 / limit
    }
}

var rows: [Row] = []
var wouldChange = 0
for (i, r) in roots.enumerated() {
    loop.each(i, r.name) {
        guard let status = try r.quota.status() else {
            // No maildirsize: no quota. Usage shown for a root named or --all, counted read-only.
            if !fix { rows.append(Row(root: r, limits: QuotaLimits(), usage: try r.quota.countUsage(), hasFile: false)) }
            return
        }
        let limits = QuotaLimits(bytes: status.limits.bytes.flatMap { $0 > 0 ? $0 : nil },
                                 messages: status.limits.messages.flatMap { $0 > 0 ? $0 : nil })
        var usage = status.usage
        if fix && dryRun {
            let counted = try r.quota.countUsage()
            if counted != status.recorded || status.stale { wouldChange += 1 }
            reportChange(r.name, status.recorded, counted)
            usage = counted
        } else if fix {
            // Written only when the count differs or the file is due for it (idempotent).
            let (before, after) = try r.quota.recalculateLocked(limits: nil, options: tool.lockPolicy, onlyIfChanged: true)
            usage = after.usage
            if let b = before { reportChange(r.name, b.usage, after.usage) }
        }
        rows.append(Row(root: r, limits: limits, usage: usage, hasFile: true))
    }
}
loop.end(unknown: unknown)

/// What -f changed (or with -n would change), on standard error as Cyrus prints it.
func reportChange(_ name: String, _ old: QuotaUsage, _ new: QuotaUsage) {
    guard !json else { return }
    let verb = dryRun ? "would be" : "now"
    if old.bytes != new.bytes {
        loop.warn("\(name): STORAGE usage was \(old.bytes) bytes, \(verb) \(new.bytes)")
    }
    if old.messages != new.messages {
        loop.warn("\(name): MESSAGE usage was \(old.messages), \(verb) \(new.messages)")
    }
}

rows.sort { a, b in
    if a.percent != b.percent { return a.percent > b.percent }
    if a.usage.bytes != b.usage.bytes { return a.usage.bytes > b.usage.bytes }
    return a.root.name < b.root.name
}

// MARK: Output

let warnAt = config.quotaWarnPercent
func warning(_ row: Row) -> Bool { row.percent >= 0 && row.percent > warnAt }

func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
    let fill = String(repeating: " ", count: max(0, width - s.count))
    return left ? s + fill : fill + s
}

if json {
    func resource(_ used: Int64, _ limit: Int64?, _ percent: Int64, kib: (Int64, Int64?)? = nil) -> String {
        let limitText = limit.map { "\($0)" } ?? "null"
        var out = "{\"used\":\(used),\"limit\":\(limitText),\"percent\":\(percent >= 0 ? "\(percent)" : "null")"
        if let (u, l) = kib { out += ",\"usedKiB\":\(u),\"limitKiB\":\(l.map { "\($0)" } ?? "null")" }
        return out + "}"
    }
    let parts = rows.map { r in
        "{\"root\":\(jsonString(r.root.name)),\"path\":\(jsonString(r.root.owner.root)),\"quota\":\(r.hasFile),"
            + "\"storage\":\(resource(r.usage.bytes, r.limits.bytes, r.storagePercent, kib: (r.usedKiB, r.limitKiB))),"
            + "\"messages\":\(resource(r.usage.messages, r.limits.messages, r.messagePercent)),\"warning\":\(warning(r))}"
    }
    print("{\"roots\":[\(parts.joined(separator: ","))],\"warnPercent\":\(warnAt),"
        + "\"unknown\":[\(unknown.map(jsonString).joined(separator: ","))],\"errors\":\(loop.errorsJSON)"
        + (fix ? ",\"dryRun\":\(dryRun),\"wouldChange\":\(wouldChange)" : "") + "}")
} else if format == "prometheus" {
    // node_exporter's textfile collector: one family at a time, HELP and TYPE first.
    func label(_ s: String) -> String {
        s.replacingAll("\\", "\\\\").replacingAll("\"", "\\\"").replacingAll("\n", "\\n")
    }
    let families: [(String, String, (Row) -> Int64?)] = [
        ("nestbox_quota_storage_used_bytes", "Bytes counted against the quota root's storage limit.", { $0.usage.bytes }),
        ("nestbox_quota_storage_limit_bytes", "Storage limit of the quota root in bytes (absent: no limit).", { $0.limits.bytes }),
        ("nestbox_quota_messages_used", "Messages counted against the quota root's message limit.", { $0.usage.messages }),
        ("nestbox_quota_messages_limit", "Message limit of the quota root (absent: no limit).", { $0.limits.messages }),
    ]
    var out = ""
    for (name, help, value) in families {
        out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n"
        for r in rows {
            guard let v = value(r) else { continue }
            out += "\(name){root=\"\(label(r.root.name))\",user=\"\(label(r.root.owner.user))\",domain=\"\(label(r.root.owner.domain ?? ""))\"} \(v)\n"
        }
    }
    print(out, terminator: "")
} else if !quiet {
    print("\(pad("Quota", 8)) \(pad("% Used", 8)) \(pad("Used", 8)) \(pad("Resource", 8, left: true)) Root")
    for r in rows {
        let storageLimit = r.limitKiB.map { "\($0)" } ?? ""
        let storagePercent = r.storagePercent >= 0 ? "\(r.storagePercent)" : ""
        print("\(pad(storageLimit, 8)) \(pad(storagePercent, 8)) \(pad("\(r.usedKiB)", 8)) \(pad("STORAGE", 8, left: true)) \(r.root.name)")
        let messageLimit = r.limits.messages.map { "\($0)" } ?? ""
        let messagePercent = r.messagePercent >= 0 ? "\(r.messagePercent)" : ""
        print("\(pad(messageLimit, 8)) \(pad(messagePercent, 8)) \(pad("\(r.usage.messages)", 8)) \(pad("MESSAGE", 8, left: true)) \(r.root.name)")
    }
}
fflush(stdout)
if !json && format == "text" {
    for r in rows where warning(r) {
        fputs("warning: \(r.root.name): \(r.percent)% of its quota used (quotawarnpercent \(warnAt))\n", stderr)
    }
}
finish()

func finish() -> Never {
    if let temporary = loop.errors.first(where: { $0.failure.outcome.isTemporary }) { tool.finish(temporary.failure.outcome, logged: true) }
    if let other = loop.errors.first { tool.finish(other.failure.outcome, logged: true) }
    if !unknown.isEmpty { tool.finish(.userUnknown.with(text: "User unknown"), logged: true) }
    if wouldChange > 0 { tool.finish(.problemsRemain, logged: true) }
    tool.finish(.delivered)
}

extension String {
    func replacingAll(_ a: String, _ b: String) -> String {
        split(separator: Character(a), omittingEmptySubsequences: false).joined(separator: b)
    }
}
