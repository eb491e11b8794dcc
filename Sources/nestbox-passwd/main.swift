// nestbox-passwd: creates, changes, deletes, lists and checks users in the SASL database
// (sasldb2) through libsasl2, as saslpasswd2 / sasldblistusers2 / testsaslauthd do, on the same
// file saslauthd, Postfix's smtpd and Cyrus read. Arguments and configuration in, the password
// read (prompted twice with echo off on a terminal, one line otherwise), one call into
// NestboxSASL, an exit status: 0 done, 1 wrong password (--check), 64 usage or a bad name,
// 65 bad password input, 66 no database, 67 no such user, 73 user exists, 75 temporary,
// 77 permission, 78 configuration. See man/nestbox-passwd.8.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSASL
import NestboxSupport

let spec = OptionSpec(
    program: "nestbox-passwd", version: "0.1.0", operands: "user",
    otherForms: ["[options] -d user", "[options] --list [--json]", "[options] --check user"],
    summary: """
    Sets a user's password in the SASL database (sasldb2) through libsasl2, as saslpasswd2 does:
    -c creates the user, -d deletes every record of it. The password is prompted for twice on a
    terminal, else read as one line from standard input. `user@realm` names the realm.
    """,
    options: [
        Tool.configFile,
        Tool.override,
        .flag("c", name: "create", help: "create the user (refused if it exists)"),
        .flag("d", name: "delete", help: "delete the user and every secret stored for it"),
        .flag("p", name: "pipe", help: "read the password as one line from standard input, without prompts"),
        .flag("n", name: "no-plain", help: "store no plaintext userPassword, only the mechanisms' secrets"),
        .value("f", name: "file", "file", help: "the database (default: sasl_sasldb_path, /etc/sasldb2)"),
        .value("u", name: "realm", "domain", help: "the user's realm (default: the host name)"),
        .value("a", name: "appname", "appname", help: "libsasl2 application name (default: saslpasswd)"),
        .flag("v", name: "verbose", help: "say what was stored or removed, and libsasl2's version"),
        .flag(long: "list", name: "list", help: "list every record as sasldblistusers2 does, sorted by user"),
        .flag(long: "json", name: "json", help: "list as one JSON document on standard output"),
        .value(long: "check", name: "check", "user", help: "check the user's password (exit 0 right, 1 wrong)"),
        Tool.logToStandardError,
    ],
    epilogue: """
    Exit status: 0 done, 1 wrong password, 64 usage or bad name, 65 bad password input,
    66 no database, 67 no such user, 73 user exists, 75 temporary failure, 77 permission denied,
    78 configuration error (see nestbox-passwd(8)).
    """)

let tool = Tool(spec, reporting: .standardError).start()
let config = tool.config
let parsed = tool.options
let path = parsed.value("file") ?? config.string("sasl_sasldb_path")
let listing = parsed.has("list") || parsed.has("json")
let checking = parsed.value("check")
let modes = [listing, checking != nil, parsed.has("delete")].filter { $0 }.count
if modes > 1 { tool.usageError("--list, --check and -d are different commands: give one") }
if parsed.has("create") && (parsed.has("delete") || listing || checking != nil) {
    tool.usageError("-c creates a user: it goes with no -d, --list or --check")
}
if listing || checking != nil {
    if !parsed.operands.isEmpty { tool.usageError("unexpected argument \(printable(parsed.operands[0]))") }
} else if parsed.operands.count != 1 {
    tool.usageError(parsed.operands.isEmpty ? "no user given" : "one user at a time")
}
if path.isEmpty || !path.hasPrefix("/") { tool.usageError("-f \(printable(path)): the database must be an absolute path") }
let defaultRealm = config.defaultDomain.isEmpty ? config.serverName : config.defaultDomain

// MARK: Listing

if listing {
    let entries = tool.orFail { try SASLDatabase(path: path).entries() }
    if parsed.has("json") {
        var users: [(String, String, [String])] = []
        for e in entries {
            if let last = users.last, last.0 == e.user, last.1 == e.realm { users[users.count - 1].2.append(e.property) }
            else { users.append((e.user, e.realm, [e.property])) }
        }
        let items = users.map { u in
            "{\"user\":\(jsonString(u.0)),\"realm\":\(jsonString(u.1)),\"properties\":[\(u.2.map(jsonString).joined(separator: ","))]}"
        }
        print("{\"database\":\(jsonString(path)),\"users\":[\(items.joined(separator: ","))]}")
    } else {
        for e in entries { print(e.line) }
    }
    tool.finish(.delivered)
}

// MARK: The password

/// One line of standard input, without its line end; nil at end of input.
func readLine(from fd: Int32) -> String? {
    var bytes: [UInt8] = []
    var byte: UInt8 = 0
    while true {
        let n = read(fd, &byte, 1)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
        if byte == UInt8(ascii: "\n") { break }
        bytes.append(byte)
        if bytes.count > 4096 { tool.finish(.dataError.with(text: "Bad password"), detail: "password longer than 4096 bytes") }
    }
    if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
    return String(decoding: bytes, as: UTF8.self)
}

/// Prompts on the terminal with echo off and reads one line. Echo goes off before the prompt
/// is shown, so an answer typed (or sent) as soon as the prompt appears is neither echoed nor
/// flushed; the old settings come back without discarding anything.
func prompt(_ text: String) -> String? {
    var saved = termios()
    let isTerminal = tcgetattr(0, &saved) == 0
    if isTerminal {
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO | ECHONL)
        quiet.c_lflag |= tcflag_t(ICANON)
        tcsetattr(0, TCSANOW, &quiet)
    }
    fputs(text, stderr)
    fflush(stderr)
    let line = readLine(from: 0)
    if isTerminal { tcsetattr(0, TCSANOW, &saved) }
    fputs("\n", stderr)
    return line
}

func readPassword(confirm: Bool) -> String {
    let badInput = Outcome.dataError.with(text: "Bad password")
    let password: String
    if parsed.has("pipe") || isatty(0) == 0 {
        guard let line = readLine(from: 0) else { tool.finish(badInput, detail: "no password on standard input") }
        password = line
    } else {
        guard let first = prompt("Password:") else { tool.finish(badInput, detail: "no password given") }
        if confirm {
            guard let again = prompt("Again (for verification):") else { tool.finish(badInput, detail: "no password given the second time") }
            if again != first { tool.finish(badInput, detail: "the two passwords do not match: nothing changed") }
        }
        password = first
    }
    if password.isEmpty { tool.finish(badInput, detail: "empty password: nothing changed") }
    if password.utf8.contains(0) { tool.finish(badInput, detail: "NUL byte in the password") }
    return password
}

// MARK: Changing and checking

let typed = checking ?? parsed.operands[0]
let name = tool.orFail { try SASLName(typed, realm: parsed.value("realm"), defaultRealm: defaultRealm) }
let users = tool.orFail {
    try SASLUsers(path: path, appName: parsed.value("appname") ?? "saslpasswd",
                  group: config.string("sasl_sasldb_group"), lockPolicy: tool.lockPolicy,
                  groupError: { [config] in config.failure("sasl_sasldb_group", $0) })
}
let verbose = parsed.has("verbose")
if verbose { print("using \(SASLServer.libraryVersion), database \(path)") }

if checking != nil {
    let password = readPassword(confirm: false)
    if tool.orFail({ try users.check(name, password: password) }) {
        if verbose { print("\(name): password accepted") }
        tool.finish(.delivered)
    }
    tool.finish(.authenticationFailed, detail: "\(name): wrong password")
}

let change: SASLUsers.Change = parsed.has("delete") ? .delete : parsed.has("create") ? .create : .change
let password = change == .delete ? nil : readPassword(confirm: true)
let report = tool.orFail { try users.apply(change, name, password: password, noPlain: parsed.has("no-plain")) }
let what = change == .delete ? "deleted" : change == .create ? "created" : "changed"
Log.info("\(name): \(what) in \(path)")
if verbose {
    if report.createdDatabase { print("created \(path)") }
    if !report.removed.isEmpty { print("\(name): removed \(report.removed.joined(separator: ", "))") }
    if !report.stored.isEmpty { print("\(name): stored \(report.stored.joined(separator: ", "))") }
}
tool.finish(.delivered)
