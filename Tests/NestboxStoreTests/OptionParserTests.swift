import XCTest
import NestboxSupport

/// The option parser (Options.swift): argv vectors in, the parsed options or the usage error out.
final class OptionParserTests: XCTestCase {
    /// A spec shaped like nestbox-deliver's, plus long options of the kinds the next tools take.
    static let spec = OptionSpec(
        program: "nestbox-test", version: "9.9", operands: "user...",
        summary: "Test spec.",
        options: [
            Tool.configFile,
            Tool.override,
            .value("r", "f", name: "sender", "addr", help: "sender"),
            .value("m", name: "folder", "folder", help: "folder"),
            .flag("q", name: "ignore-quota", help: "ignore quota"),
            .flag("d", "e", name: "ignored", help: "ignored"),
            .flag(long: "all", help: "every mailbox"),
            .flag("j", long: "json", help: "JSON output"),
            .value(long: "format", "name", help: "output format"),
            .value(long: "output-file", "path", help: "where to write"),
        ])

    typealias O = ParsedOptions.Occurrence

    /// argv -> (occurrences, operands).
    static let accepted: [([String], [O], [String])] = [
        ([], [], []),
        (["alice"], [], ["alice"]),
        (["-q", "alice", "bob"], [O(name: "ignore-quota", value: nil)], ["alice", "bob"]),
        // Bundled flags, then a value option at the end of the bundle taking the next word.
        (["-eq", "alice"], [O(name: "ignored", value: nil), O(name: "ignore-quota", value: nil)], ["alice"]),
        (["-qr", "s@x", "a"], [O(name: "ignore-quota", value: nil), O(name: "sender", value: "s@x")], ["a"]),
        // Values attached or separate.
        (["-C/etc/x.conf", "a"], [O(name: "config", value: "/etc/x.conf")], ["a"]),
        (["-C", "/etc/x.conf", "a"], [O(name: "config", value: "/etc/x.conf")], ["a"]),
        (["-rsender@x", "a"], [O(name: "sender", value: "sender@x")], ["a"]),
        (["-qrsender@x", "a"], [O(name: "ignore-quota", value: nil), O(name: "sender", value: "sender@x")], ["a"]),
        // The next word is a value whatever it looks like, even empty (pipe(8)'s -m "").
        (["-r", "-q", "a"], [O(name: "sender", value: "-q")], ["a"]),
        (["-m", "", "a"], [O(name: "folder", value: "")], ["a"]),
        (["-r", "--", "a"], [O(name: "sender", value: "--")], ["a"]),
        // Aliases share a name; repeated options keep every value in order.
        (["-r", "a@x", "-f", "b@x", "u"], [O(name: "sender", value: "a@x"), O(name: "sender", value: "b@x")], ["u"]),
        (["-o", "a=1", "-ob=2", "u"], [O(name: "override", value: "a=1"), O(name: "override", value: "b=2")], ["u"]),
        // Options after operands are still options (as nestbox-deliver always took them).
        (["alice", "-q", "bob"], [O(name: "ignore-quota", value: nil)], ["alice", "bob"]),
        // -- ends the options; a lone - is an operand.
        (["-q", "--", "-x", "--all"], [O(name: "ignore-quota", value: nil)], ["-x", "--all"]),
        (["-", "a"], [], ["-", "a"]),
        // Long options: flags, =value, separate value, with a short alias.
        (["--all"], [O(name: "all", value: nil)], []),
        (["--json", "-j"], [O(name: "json", value: nil), O(name: "json", value: nil)], []),
        (["--format=table", "u"], [O(name: "format", value: "table")], ["u"]),
        (["--format", "table", "u"], [O(name: "format", value: "table")], ["u"]),
        (["--format=", "u"], [O(name: "format", value: "")], ["u"]),
        (["--format=a=b"], [O(name: "format", value: "a=b")], []),
        // Non-ASCII operands and values pass through untouched.
        (["-m", "Entwürfe", "jörg"], [O(name: "folder", value: "Entwürfe")], ["jörg"]),
    ]

    func testAccepted() throws {
        for (argv, occurrences, operands) in Self.accepted {
            let parsed = try Self.spec.parse(argv)
            XCTAssertEqual(parsed.request, .run, "\(argv)")
            XCTAssertEqual(parsed.occurrences, occurrences, "\(argv)")
            XCTAssertEqual(parsed.operands, operands, "\(argv)")
        }
    }

    /// argv -> the usage error's text. Every one exits 64 with 4.3.5.
    static let refused: [([String], String)] = [
        (["-x", "alice"], "unknown option -x"),
        (["-qx"], "unknown option -x"),
        (["-\u{1}"], "unknown option -\\x01"),
        (["-r"], "option -r needs a value"),
        (["-C"], "option -C needs a value"),
        (["alice", "-m"], "option -m needs a value"),
        (["--bogus"], "unknown option --bogus"),
        (["--bogus=1"], "unknown option --bogus"),
        (["--al"], "unknown option --al"),
        (["--all=yes"], "option --all takes no value"),
        (["--format"], "option --format needs a value"),
        (["--version=2"], "option --version takes no value"),
        // The first error wins.
        (["-y", "-z"], "unknown option -y"),
    ]

    func testRefused() {
        for (argv, text) in Self.refused {
            let failure = XCTAssertThrowsFailure(try Self.spec.parse(argv), "\(argv)")
            XCTAssertEqual(failure?.detail, text, "\(argv)")
            XCTAssertEqual(failure?.outcome, .usage, "\(argv)")
            XCTAssertEqual(failure?.outcome.exitCode, 64, "\(argv)")
            XCTAssertEqual(failure?.outcome.dsnLine, "4.3.5 Command line usage error", "\(argv)")
        }
    }

    func testOperandsRefusedWhenTheSpecTakesNone() throws {
        let spec = OptionSpec(program: "d", version: "1", summary: "s", options: [.flag("i", name: "inetd", help: "i")])
        XCTAssertEqual(try spec.parse(["-i"]).has("inetd"), true)
        for (argv, text) in [(["x"], "unexpected argument x"), (["-i", "--", "-i"], "unexpected argument -i"),
                             (["-i", "a\u{7f}"], "unexpected argument a\\x7f")] {
            let failure = XCTAssertThrowsFailure(try spec.parse(argv), "\(argv)")
            XCTAssertEqual(failure?.detail, text, "\(argv)")
            XCTAssertEqual(failure?.outcome, .usage, "\(argv)")
        }
    }

    /// --help and --version win over anything else on the line, errors included.
    func testHelpAndVersionRequests() throws {
        let table: [([String], ParsedOptions.Request)] = [
            (["--help"], .help), (["-h"], .help), (["-qh", "alice"], .help), (["-x", "--help"], .help),
            (["--version"], .version), (["--version", "-x"], .version), (["--version", "--help"], .help),
            (["--", "--help"], .run),
        ]
        for (argv, request) in table {
            XCTAssertEqual(try Self.spec.parse(argv).request, request, "\(argv)")
        }
    }

    func testLookups() throws {
        let parsed = try Self.spec.parse(["-C", "a.conf", "-C", "b.conf", "-o", "x=1", "-o", "y=2", "-q", "u"])
        XCTAssertEqual(parsed.value("config"), "b.conf", "the last -C wins")
        XCTAssertEqual(parsed.values("override"), ["x=1", "y=2"])
        XCTAssertTrue(parsed.has("ignore-quota"))
        XCTAssertFalse(parsed.has("all"))
        XCTAssertEqual(parsed.count("ignore-quota"), 1)
        XCTAssertNil(parsed.value("sender"))
        XCTAssertEqual(parsed.values("sender"), [])
    }

    func testHelpTextComesFromTheSpec() {
        let help = Self.spec.helpText
        XCTAssertTrue(help.hasPrefix("usage: nestbox-test [-C file] [-o key=value]... [-r addr | -f addr]"), help)
        XCTAssertTrue(help.contains("\n       nestbox-test --help | --version\nTest spec.\n"), help)
        for option in Self.spec.options {
            XCTAssertTrue(help.contains(option.help), "\(option.name) has its line")
        }
        // Labels in one column as wide as the widest label up to 14; a wider one gets its own line.
        XCTAssertTrue(help.contains("\n  -r, -f addr    sender\n"), help)
        XCTAssertTrue(help.contains("\n  --format name  output format\n"), help)
        XCTAssertTrue(help.contains("\n  --output-file path\n                 where to write\n"), help)
        XCTAssertTrue(help.contains("\n  -h, --help     print this help and exit\n"), help)
        XCTAssertTrue(help.split(separator: "\n").allSatisfy { $0.count <= 95 }, help)
        XCTAssertEqual(Self.spec.versionText, "nestbox-test 9.9\n")
    }
}
