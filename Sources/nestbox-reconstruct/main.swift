// nestbox-reconstruct: checks and repairs mailboxes whose files and indexes disagree, keeping
// every UID that can be kept (Cyrus `reconstruct` command line). Arguments and configuration
// in, privileges dropped, each named mailbox handed to the store's Folder.reconstruct under the
// same locks Dovecot and deliveries take, one line per problem out, and an exit status:
// 0 consistent or fully repaired, 1 problems remain (always with -n when something was found),
// 67 unknown user or mailbox, 75 temporary failure (a lock not had), 64 usage, 78 configuration.
// See man/nestbox-reconstruct.8.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxStore
import NestboxSupport

let spec = OptionSpec(
    program: "nestbox-reconstruct", version: "0.1.0", operands: "mailbox...",
    otherForms: ["[options] --all", "[options] -u user..."],
    summary: """
    Checks each mailbox's dovecot-uidlist, message files, sizes, directories and maildirsize
    against each other and repairs what disagrees, keeping every message's UID.
    Mailboxes are named as in Cyrus (user/alice, user/alice/Lists, shared folders), with * and %.
    """,
    options: [
        Tool.configFile,
        Tool.override,
        .flag("r", name: "recurse", help: "also every folder below each named mailbox"),
        .flag("f", name: "find", help: "subscribe folders found on disk that the subscriptions do not list"),
        .flag("n", name: "dry-run", help: "report only: change nothing"),
        .flag("s", name: "skip-stat", help: "trust the sizes in file names (do not stat every file)"),
        .flag("q", name: "quiet", help: "print only problems that remain, and errors"),
        .flag("G", name: "reread", help: "read every message to check its ,S= and ,W= sizes"),
        .flag("O", name: "odd", help: "remove odd (non-message) files from new/ and cur/; default: report them"),
        .flag("u", name: "users", help: "the arguments are users: all of each user's mailboxes"),
        .flag(long: "all", name: "all", help: "every mailbox of every user, and the shared folders"),
        .flag(long: "json", name: "json", help: "print one JSON report on standard output"),
        Tool.logToStandardError,
    ],
    epilogue: """
    Exit status: 0 consistent or repaired, 1 problems remain, 64 usage, 67 unknown user or
    mailbox, 75 temporary failure, 78 configuration error (see nestbox-reconstruct(8)).
    """)

let tool = Tool(spec, reporting: .standardError).start()
let config = tool.config
let parsed = tool.options
if parsed.operands.isEmpty && !parsed.has("all") { tool.usageError("no mailbox given (or --all)") }
if parsed.has("all") && !parsed.operands.isEmpty { tool.usageError("--all takes no mailbox names") }
tool.dropPrivileges()

var options = ReconstructOptions()
options.dryRun = parsed.has("dry-run")
options.rereadMessages = parsed.has("reread")
options.skipStat = parsed.has("skip-stat")
options.removeOddFiles = parsed.has("odd")
options.lockPolicy = tool.lockPolicy
let quiet = parsed.has("quiet")
let json = parsed.has("json")

// MARK: Which mailboxes

let names = MailboxNames(config: config)
let separator = String(names.separator)
var selection = tool.orFail { try MailboxSelection(names) }
/// `m` and every folder below it.
func addTree(_ m: ResolvedMailbox) {
    selection.add(m)
    let prefix = m.folder.isRoot ? "" : m.folder.name + separator
    for other in selection.everything where other.owner == m.owner && other.folder.path != m.folder.path {
        if m.folder.isRoot || other.folder.name.hasPrefix(prefix) { selection.add(other) }
    }
}
if parsed.has("all") {
    selection.everything.forEach { selection.add($0) }
}
for operand in parsed.operands {
    let typed = parsed.has("users") ? MailboxNames.userPrefix + separator + operand : operand
    for m in tool.orFail({ try selection.resolve(typed, shown: operand) }) {
        if parsed.has("recurse") || parsed.has("users") { addTree(m) } else { selection.add(m) }
    }
}
let mailboxes = selection.mailboxes
let unknown = selection.unknown

// MARK: Checking and repairing

struct Line {
    var mailbox: String
    var problem: ReconstructProblem
}
var lines: [Line] = []
var reports: [(ResolvedMailbox, FolderReport)] = []
var quotaRootsDone: Set<String> = []
let loop = MailboxLoop(count: mailboxes.count, json: json)

func show(_ mailbox: String, _ p: ReconstructProblem) {
    lines.append(Line(mailbox: mailbox, problem: p))
    if json || (quiet && p.repaired) { return }
    loop.say("\(mailbox): \(p.what) (\(p.path)): \(p.action)")
}

for (i, m) in mailboxes.enumerated() {
    loop.each(i, m.name) {
        let report = try m.folder.reconstruct(options)
        reports.append((m, report))
        for p in report.problems { show(m.name, p) }
        if report.newUIDValidity && !json {
            loop.warn("\(m.name): NO UID COULD BE KEPT: a new UIDVALIDITY was given; every IMAP client downloads this mailbox again")
        }
        if !json && !quiet {
            let repaired = report.problems.filter(\.repaired).count
            loop.say("\(m.name): \(report.messages) messages, \(report.problems.count) problems, \(repaired) repaired")
        }
        // The owner's maildirsize, once per mail root.
        if quotaRootsDone.insert(m.folder.mailRoot).inserted {
            if let p = try config.quotaRoot(m.folder.mailRoot).reconstruct(dryRun: options.dryRun) { show(m.name, p) }
        }
        if parsed.has("find") && !m.folder.isRoot {
            let levels = m.folder.name.split(separator: names.separator).map { ModifiedUTF7.encode(String($0)) }
            if try !Subscriptions.read(root: m.folder.mailRoot).contains(levels) {
                var p = ReconstructProblem(what: "folder not subscribed", path: m.folder.path,
                                           action: options.dryRun ? "would subscribe" : "subscribed", repaired: !options.dryRun)
                if !options.dryRun {
                    do {
                        try Subscriptions.add([levels], root: m.folder.mailRoot, lockPolicy: options.lockPolicy)
                    } catch {
                        p.action = "not subscribed: \(error)"
                        p.repaired = false
                    }
                }
                show(m.name, p)
            }
        }
    }
}
loop.end(unknown: unknown)

// MARK: Report and exit status

let remaining = lines.filter { !$0.problem.repaired }.count
if json {
    var parts: [String] = []
    for (m, r) in reports {
        let problems = lines.filter { $0.mailbox == m.name }.map { l in
            "{\"what\":\(jsonString(l.problem.what)),\"path\":\(jsonString(l.problem.path)),\"action\":\(jsonString(l.problem.action)),\"repaired\":\(l.problem.repaired)}"
        }
        parts.append("{\"mailbox\":\(jsonString(m.name)),\"path\":\(jsonString(r.path)),\"messages\":\(r.messages),"
            + "\"newUIDValidity\":\(r.newUIDValidity),\"problems\":[\(problems.joined(separator: ","))]}")
    }
    print("{\"dryRun\":\(options.dryRun),\"mailboxes\":[\(parts.joined(separator: ","))],"
        + "\"unknown\":[\(unknown.map(jsonString).joined(separator: ","))],\"errors\":\(loop.errorsJSON),"
        + "\"problemsRemaining\":\(remaining)}")
    fflush(stdout)
}

if let temporary = loop.errors.first(where: { $0.failure.outcome.isTemporary }) { tool.finish(temporary.failure.outcome, logged: true) }
if let other = loop.errors.first { tool.finish(other.failure.outcome, logged: true) }
if !unknown.isEmpty { tool.finish(.userUnknown.with(text: "Mailbox unknown"), logged: true) }
if remaining > 0 { tool.finish(.problemsRemain, logged: true) }
tool.finish(.delivered)
