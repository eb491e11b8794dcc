// nestbox-purge: expunges what is \Deleted, expires what policy says is too old or too large,
// and prunes the duplicate database (Cyrus `ipurge` and `cyr_expire -E` command lines).
// Arguments and configuration in, privileges dropped, each selected mailbox handed to the
// store's Folder.purge (under the uidlist lock Dovecot and deliveries take), one line per
// mailbox and a total out, and an exit status: 0 done, 1 some mailboxes failed while others
// were purged, 64 usage, 67 unknown user or mailbox, 75 temporary failure (nothing could be
// done, e.g. a lock not had), 78 configuration. See man/nestbox-purge.8.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxStore
import NestboxSupport

let spec = OptionSpec(
    program: "nestbox-purge", version: "0.1.0", operands: "mailbox-pattern...",
    otherForms: ["[options] --all", "[options] -E duration"],
    summary: """
    Expunges the messages of each mailbox that the selection takes: by default those flagged
    \\Deleted; with -d, -b, -k or -m those older or larger than given (ipurge's rules); with
    --rules also what the folder's purge_rules entry expires. Mailboxes are named as in Cyrus
    (user/alice, user/alice/Trash, shared folders), with * and % (user/* is every folder of
    every user). User mailboxes are purged only with -f.
    """,
    options: [
        Tool.configFile,
        .value(long: "override", name: Tool.override.name, "key=value", repeatable: true,
               help: "override one configuration key (repeatable; -o is ipurge's only-deleted)"),
        .value("d", name: "days", "age", help: "messages older than age: days, or with units (30d, 12h, 90m)"),
        .value("b", name: "bytes", "bytes", help: "messages larger than this many bytes"),
        .value("k", name: "kib", "KiB", help: "messages larger than this many KiB"),
        .value("m", name: "mib", "MiB", help: "messages larger than this many MiB"),
        .flag("x", name: "exact", help: "exact match: age in the same whole day, size equal"),
        .flag("X", name: "delivery-time", help: "age by delivery time instead of the Date: header"),
        .flag("i", name: "invert", help: "invert the age and size match (newer, smaller, different)"),
        .flag("s", name: "skip-flagged", help: "never purge \\Flagged messages"),
        .flag("o", name: "only-deleted", help: "purge only messages flagged \\Deleted"),
        .flag("f", name: "force", help: "include user mailboxes (without it, only shared folders)"),
        .flag("n", name: "dry-run", help: "report what would be purged: change nothing"),
        .flag("v", name: "verbose", help: "one line per message purged"),
        .flag("q", name: "quiet", help: "print nothing but errors"),
        .value("E", name: "expire", "duration",
               help: "prune duplicate records older than duration (plain number: days) and stale spool and tmp/ files"),
        .value(long: "mbox", name: "mbox", "path", repeatable: true,
               help: "also purge this mbox file (a bare name: in mbox_spool_directory); D in X-Status is \\Deleted"),
        .flag(long: "rules", name: "rules", help: "also expire by each folder's purge_rules entry"),
        .flag(long: "all", name: "all", help: "every mailbox of every user (with -f) and every shared folder"),
        .flag(long: "json", name: "json", help: "print one JSON report on standard output"),
        Tool.logToStandardError,
    ],
    epilogue: """
    Exit status: 0 done, 1 some mailboxes failed, 64 usage, 67 unknown user or mailbox,
    75 temporary failure, 78 configuration error (see nestbox-purge(8)).
    """)

let tool = Tool(spec, reporting: .standardError).start()
let config = tool.config
let parsed = tool.options
let json = parsed.has("json")
let quiet = parsed.has("quiet")
let verbose = parsed.has("verbose") && !quiet
let dryRun = parsed.has("dry-run")
let force = parsed.has("force")

// MARK: The selection

var criteria = PurgeCriteria()
criteria.exact = parsed.has("exact")
criteria.useDeliveryTime = parsed.has("delivery-time")
criteria.invert = parsed.has("invert")
criteria.skipFlagged = parsed.has("skip-flagged")
criteria.onlyDeleted = parsed.has("only-deleted")
if let days = parsed.value("days") {
    guard let age = Config.parseDuration(days, plainUnit: 86400) else { tool.usageError("-d: expected days or a duration like 30d, 12h, 90m, got \"\(days)\"") }
    criteria.age = age
}
let sizes = [("bytes", Int64(1)), ("kib", Int64(1024)), ("mib", Int64(1 << 20))].filter { parsed.has($0.0) }
if sizes.count > 1 { tool.usageError("give only one of -b, -k and -m") }
if let (name, unit) = sizes.first {
    let text = parsed.value(name) ?? ""
    guard let n = Int64(text), n >= 0, n <= Int64.max / unit else { tool.usageError("-\(name.prefix(1)): expected a whole number, got \"\(text)\"") }
    criteria.size = n * unit
}
if criteria.age == nil && criteria.size == nil && (criteria.exact || criteria.invert) {
    tool.usageError("-x and -i need an age (-d) or a size (-b, -k, -m)")
}
var expire: Double? = nil
if let text = parsed.value("expire") {
    guard let e = Config.parseDuration(text, plainUnit: 86400) else { tool.usageError("-E: expected a duration like 3d or 36h, got \"\(text)\"") }
    expire = e
}
if parsed.operands.isEmpty && !parsed.has("all") && expire == nil && !parsed.has("mbox") {
    tool.usageError("no mailbox given (or --all, --mbox or -E)")
}
if parsed.has("all") && !parsed.operands.isEmpty { tool.usageError("--all takes no mailbox names") }
let rules = parsed.has("rules") ? PurgeRule.rules(config) : []
if parsed.has("rules") && rules.isEmpty && !quiet { fputs("nestbox-purge: --rules: purge_rules is empty in \(config.source)\n", stderr) }
tool.dropPrivileges()

// MARK: Which mailboxes

let names = MailboxNames(config: config)
var selection = tool.orFail { try MailboxSelection(names) }
if parsed.has("all") {
    selection.everything.filter { force || $0.owner.isShared }.forEach { selection.add($0) }
}
for operand in parsed.operands {
    let found = tool.orFail { try selection.resolve(operand, shown: operand) }
    let isPattern = operand.contains("*") || operand.contains("%")
    if !isPattern && !force, let user = found.first(where: { !$0.owner.isShared }) {
        tool.usageError("\(user.name) is a user mailbox: give -f to purge user mailboxes")
    }
    found.filter { force || $0.owner.isShared }.forEach { selection.add($0) }
}
// mbox files: each --mbox (a name without / is one in mbox_spool_directory), and with -f --all
// every spool file there (not dot files, not lock files).
let spoolDirectory = config.string("mbox_spool_directory")
var mboxes: [String] = parsed.values("mbox").map { name in
    name.contains("/") || spoolDirectory.isEmpty ? name : spoolDirectory + "/" + name
}
if parsed.has("all") && force && !spoolDirectory.isEmpty {
    mboxes += Mbox.spoolFiles(in: spoolDirectory).filter { !mboxes.contains($0) }
}
let mailboxes = selection.mailboxes
let unknown = selection.unknown

// MARK: Purging

var reports: [(name: String, path: String, report: PurgeReport)] = []
var total = PurgeReport()
let loop = MailboxLoop(count: mailboxes.count + mboxes.count, json: json)
let now = Int64(wallSeconds())
let verb = dryRun ? "would expunge" : "expunged"

func tally(_ t: PurgeTally) -> String { "\(t.messages) messages \(t.bytes) bytes" }

func summary(_ r: PurgeReport) -> String {
    "total \(tally(r.total)), \(verb) \(tally(r.expunged)), remaining \(tally(r.remaining))"
}

/// Counts a mailbox's report into the total, logs and prints it.
func finished(_ name: String, _ path: String, _ report: PurgeReport) {
    reports.append((name, path, report))
    total.total.add(report.total)
    total.expunged.add(report.expunged)
    if report.expunged.messages > 0 && !dryRun {
        Log.info("\(name): expunged \(tally(report.expunged)), remaining \(tally(report.remaining))")
    }
    if json || quiet { return }
    if verbose { for line in report.removed { loop.say("\(name): \(verb) \(line)") } }
    loop.say("\(name): \(summary(report))")
}

for (i, m) in mailboxes.enumerated() {
    let rule = PurgeRule.rule(for: m.folder.name, in: rules, separator: names.separator)?.criteria
    loop.each(i, m.name) {
        let report = try m.folder.purge(dryRun: dryRun, options: tool.lockPolicy,
                                        counting: config.quotaRoot(m.folder.mailRoot).counting) { message in
            criteria.selects(message, now: now) || rule?.selects(message, now: now) == true
        }
        finished(m.name, m.folder.path, report)
    }
}
let mboxRule = PurgeRule.rule(for: "INBOX", in: rules, separator: names.separator)?.criteria
for (i, path) in mboxes.enumerated() {
    loop.each(mailboxes.count + i, path) {
        let result = try Mbox.purge(path: path, locks: config.mboxWriteLocks, options: tool.lockPolicy, dryRun: dryRun) { message in
            criteria.selects(message, now: now) || mboxRule?.selects(message, now: now) == true
        }
        var report = PurgeReport()
        report.total = PurgeTally(bytes: result.bytes, messages: result.messages)
        report.expunged = PurgeTally(bytes: result.removedBytes, messages: result.removedMessages)
        report.removed = result.removed.map { "message \($0.index + 1)" + ($0.uid.map { " uid \($0)" } ?? "") }
        finished(path, path, report)
    }
}
loop.end(unknown: unknown)

var pruned: PruneReport? = nil
if let expire {
    let store = MailStore(config: config)
    let report = store.prune(duplicatesOlderThan: expire, folders: selection.everything.map(\.folder), dryRun: dryRun)
    pruned = report
    if !json && !quiet {
        loop.say("\(dryRun ? "would prune" : "pruned"): \(report.duplicateRecords) duplicate records, \(report.spoolFiles) spool files, "
            + "\(report.creationTrees) creation trees, \(report.temporaryFiles) tmp/ files")
    }
}
if !json && !quiet && !(parsed.operands.isEmpty && !parsed.has("all") && mboxes.isEmpty) {
    loop.say("all \(reports.count) mailboxes: \(summary(total))")
}

// MARK: Report and exit status

if json {
    func tallyJSON(_ t: PurgeTally) -> String { "{\"messages\":\(t.messages),\"bytes\":\(t.bytes)}" }
    func reportJSON(_ r: PurgeReport) -> String {
        "\"total\":\(tallyJSON(r.total)),\"expunged\":\(tallyJSON(r.expunged)),\"remaining\":\(tallyJSON(r.remaining))"
    }
    let parts = reports.map { name, path, r in
        "{\"mailbox\":\(jsonString(name)),\"path\":\(jsonString(path)),\(reportJSON(r)),"
            + "\"removed\":[\(r.removed.map(jsonString).joined(separator: ","))]}"
    }
    let prunedJSON = pruned.map {
        "{\"duplicateRecords\":\($0.duplicateRecords),\"spoolFiles\":\($0.spoolFiles),\"creationTrees\":\($0.creationTrees),\"temporaryFiles\":\($0.temporaryFiles)}"
    } ?? "null"
    print("{\"dryRun\":\(dryRun),\"mailboxes\":[\(parts.joined(separator: ","))],\(reportJSON(total)),"
        + "\"pruned\":\(prunedJSON),\"unknown\":[\(unknown.map(jsonString).joined(separator: ","))],"
        + "\"errors\":\(loop.errorsJSON)}")
    fflush(stdout)
}

let errors = loop.errors
if let worst = errors.first(where: { $0.failure.outcome.isTemporary }) ?? errors.first {
    // Nothing done at all: the failure's own status (75 for a lock timeout); some done: 1.
    if reports.isEmpty { tool.finish(worst.failure.outcome, logged: true) }
    tool.finish(.problemsRemain.with(text: "Partial failure"), logged: true)
}
if !unknown.isEmpty { tool.finish(.userUnknown.with(text: "Mailbox unknown"), logged: true) }
tool.finish(.delivered)
