#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// Purge selection (ipurge's rules, PurgeCriteria) as a table over one folder of known delivery
/// times, Date: headers, sizes and flags; durations, rules and dates as they are written; the
/// folder purge itself (dry run and real) and the -E pruning.
final class PurgeTests: TempDirTestCase {
    static let now: Int64 = 1_800_000_000
    static let day: Int64 = 86400

    /// One message of the fixture: delivered `delivered` days ago, Date: `dated` days ago (nil:
    /// no Date: header), `big` (about 5 KB) or small, with `flags`.
    struct Spec {
        var delivered: Double
        var dated: Double?
        var big: Bool
        var flags: String
    }

    /// 1: old, plain. 2: delivered recently with an old Date:, big, seen. 3: delivered long ago
    /// with a recent Date:, deleted. 4: old, big, flagged and deleted. 5: recent, no Date:,
    /// flagged. 6: delivered 31.1 days ago, dated 30.5 days ago, deleted.
    static let specs: [Spec] = [
        Spec(delivered: 40, dated: 40, big: false, flags: ""),
        Spec(delivered: 10, dated: 100, big: true, flags: "S"),
        Spec(delivered: 100, dated: 5, big: false, flags: "T"),
        Spec(delivered: 40, dated: 40, big: true, flags: "FT"),
        Spec(delivered: 2, dated: nil, big: false, flags: "F"),
        Spec(delivered: 31.1, dated: 30.5, big: false, flags: "T"),
    ]

    static func rfc5322(_ t: Int64) -> String {
        // 2027-01-15 08:00:00 UTC is 1_800_000_000; days back from it, written in +0200.
        let local = t + 7200
        let days = local >= 0 ? local / 86400 : (local - 86399) / 86400
        let secs = local - days * 86400
        // civil from days (Hinnant)
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ n: Int64) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "Fri, \(d) \(months[Int(m) - 1]) \(y) \(two(secs / 3600)):\(two(secs / 60 % 60)):\(two(secs % 60)) +0200"
    }

    /// The folder of `specs` (numbered by the store in Dovecot's order: by delivery time);
    /// returns it, each message's quota bytes and its UID, in `specs` order.
    func fixture() throws -> (Folder, [Int64], [UInt32]) {
        let folder = try MaintenanceFixture.inbox(dir)
        var sizes: [Int64] = []
        var stems: [String] = []
        for (i, s) in Self.specs.enumerated() {
            var text = "From: s@example.org\nSubject: message \(i + 1)\n"
            if let dated = s.dated { text += "Date: \(Self.rfc5322(Self.now - Int64(dated * Double(Self.day))))\n" }
            text += "\nbody \(i + 1)\n" + (s.big ? String(repeating: "0123456789abcdef\n", count: 300) : "")
            let delivered = Self.now - Int64(s.delivered * Double(Self.day))
            let stem = MaintenanceFixture.put(folder, text, base: "\(delivered).M\(i)P1.mx", sub: s.flags.isEmpty ? "new" : "cur",
                                              flags: s.flags.isEmpty ? nil : s.flags)
            sizes.append(MaildirName(stem).size!)
            stems.append(stem)
        }
        try folder.assignUIDs()
        let uids = try XCTUnwrap(try folder.uidList.read()).uidsByStem()
        return (folder, sizes, stems.map { uids[$0]! })
    }

    /// The numbers (1-based, `specs` order) of the messages `criteria` takes.
    func selected(_ folder: Folder, _ criteria: PurgeCriteria) throws -> [Int] {
        try FolderScan.scan(folder, readFiles: false).messages.filter { criteria.selects($0, now: Self.now) }
            .map { Int($0.name.base.split(separator: "M")[1].split(separator: "P")[0])! + 1 }.sorted()
    }

    func testSelectionTable() throws {
        let (folder, sizes, uids) = try fixture()
        XCTAssertEqual(Set(uids), [1, 2, 3, 4, 5, 6])
        let day = 86400.0
        let cases: [(String, PurgeCriteria, [Int])] = [
            ("default: \\Deleted", PurgeCriteria(), [3, 4, 6]),
            ("-s", PurgeCriteria(skipFlagged: true), [3, 6]),
            ("-o", PurgeCriteria(onlyDeleted: true), [3, 4, 6]),
            ("-d 30 (Date:, else delivery)", PurgeCriteria(age: 30 * day), [1, 2, 4, 6]),
            ("-d 30 -X", PurgeCriteria(age: 30 * day, useDeliveryTime: true), [1, 3, 4, 6]),
            ("-d 30 -x", PurgeCriteria(age: 30 * day, exact: true), [6]),
            ("-d 31 -x -X", PurgeCriteria(age: 31 * day, exact: true, useDeliveryTime: true), [6]),
            ("-d 40 -x", PurgeCriteria(age: 40 * day, exact: true), [1, 4]),
            ("-d 30 -i", PurgeCriteria(age: 30 * day, invert: true), [3, 5]),
            ("-d 30 -X -i", PurgeCriteria(age: 30 * day, useDeliveryTime: true, invert: true), [2, 5]),
            ("-d 30 -x -i", PurgeCriteria(age: 30 * day, exact: true, invert: true), [1, 2, 3, 4, 5]),
            ("-d 30 -s", PurgeCriteria(age: 30 * day, skipFlagged: true), [1, 2, 6]),
            ("-d 30 -o", PurgeCriteria(age: 30 * day, onlyDeleted: true), [4, 6]),
            ("-d 30 -i -o", PurgeCriteria(age: 30 * day, invert: true, onlyDeleted: true), [3]),
            ("-d 30 -i -s", PurgeCriteria(age: 30 * day, invert: true, skipFlagged: true), [3]),
            ("-d 3d -X (units)", PurgeCriteria(age: 3 * day, useDeliveryTime: true), [1, 2, 3, 4, 6]),
            ("-d 12h", PurgeCriteria(age: 12 * 3600), [1, 2, 3, 4, 5, 6]),
            ("-b 1000", PurgeCriteria(size: 1000), [2, 4]),
            ("-b 1000 -i", PurgeCriteria(size: 1000, invert: true), [1, 3, 5, 6]),
            ("-b 1000 -s", PurgeCriteria(size: 1000, skipFlagged: true), [2]),
            ("-b 1000 -o", PurgeCriteria(size: 1000, onlyDeleted: true), [4]),
            ("-b <size of 1> -x", PurgeCriteria(size: sizes[0], exact: true), [1]),
            ("-b <size of 1> -x -i", PurgeCriteria(size: sizes[0], exact: true, invert: true), [2, 3, 4, 5, 6]),
            ("-b <size of 1> (larger than)", PurgeCriteria(size: sizes[0]), [2, 3, 4, 6].filter { sizes[Int($0) - 1] > sizes[0] }),
            ("-d 30 -b 1000", PurgeCriteria(age: 30 * day, size: 1000), [2, 4]),
            ("-d 30 -b 1000 -X", PurgeCriteria(age: 30 * day, size: 1000, useDeliveryTime: true), [4]),
            ("-d 30 -b 1000 -i", PurgeCriteria(age: 30 * day, size: 1000, invert: true), [1, 3, 5, 6]),
            ("-d 30 -b 1000 -s -o", PurgeCriteria(age: 30 * day, size: 1000, skipFlagged: true, onlyDeleted: true), []),
            ("-d 200", PurgeCriteria(age: 200 * day), []),
            ("-d 200 -i", PurgeCriteria(age: 200 * day, invert: true), [1, 2, 3, 4, 5, 6]),
            ("rule Trash=30d", PurgeRule(folder: "Trash", age: 30 * day, includeFlagged: false).criteria, [1, 3, 6]),
            ("rule Junk=30d+flagged", PurgeRule(folder: "Junk", age: 30 * day, includeFlagged: true).criteria, [1, 3, 4, 6]),
        ]
        for (label, criteria, expected) in cases {
            XCTAssertEqual(try selected(folder, criteria), expected, label)
        }
    }

    /// The Date: header is read only when an age by it is asked for.
    func testHeaderReadOnlyWhenNeeded() {
        func check(_ c: PurgeCriteria, reads: Bool, _ label: String) {
            var read = false
            _ = c.selects(deleted: true, flagged: false, size: 10, deliveryTime: Self.now - 100 * Self.day, now: Self.now) {
                read = true
                return nil
            }
            XCTAssertEqual(read, reads, label)
        }
        check(PurgeCriteria(), reads: false, "default")
        check(PurgeCriteria(size: 1), reads: false, "-b")
        check(PurgeCriteria(size: 100), reads: false, "-b: size fails first")
        check(PurgeCriteria(age: 86400, useDeliveryTime: true), reads: false, "-X")
        check(PurgeCriteria(age: 86400), reads: true, "-d")
        check(PurgeCriteria(age: 86400, skipFlagged: true), reads: true, "-d -s")
        check(PurgeCriteria(age: 86400, onlyDeleted: true), reads: true, "-d -o")
    }

    func testDurationsRulesAndDates() {
        let cases: [(String, Double, Double?)] = [
            ("30", 86400, 30 * 86400), ("30d", 86400, 30 * 86400), ("12h", 86400, 12 * 3600), ("90m", 86400, 5400),
            ("1d12h", 86400, 36 * 3600), ("2w", 86400, 14 * 86400), ("45s", 1, 45), ("0", 86400, 0), ("1.5d", 1, 1.5 * 86400),
            ("", 86400, nil), ("d", 86400, nil), ("30x", 86400, nil), ("-3d", 86400, nil), ("3dd", 86400, nil), ("12h30", 86400, nil),
        ]
        for (text, unit, expected) in cases {
            XCTAssertEqual(Config.parseDuration(text, plainUnit: unit), expected, text)
        }
        XCTAssertEqual(Config.parseDuration("300"), 300, "plain seconds for the config's durations")

        let rules = Config.parseRules("Trash=30d Junk=14d+flagged Lists/*=1w Old=90")
        XCTAssertEqual(rules?.map(\.name), ["Trash", "Junk", "Lists/*", "Old"])
        let ages: [Double] = [30 * 86400, 14 * 86400, 7 * 86400, 90 * 86400]
        XCTAssertEqual(rules?.map(\.age), ages)
        XCTAssertEqual(rules?.map(\.includeFlagged), [false, true, false, false])
        XCTAssertEqual(Config.parseRules(""), [])
        for bad in ["Trash", "=30d", "Trash=", "Trash=soon", "Trash=30d+all"] { XCTAssertNil(Config.parseRules(bad), bad) }

        var config = Config()
        XCTAssertNoThrow(try config.set("purge_rules", "Trash=30d Lists/%=2d+flagged", file: "t", line: 1))
        let parsed = PurgeRule.rules(config)
        XCTAssertEqual(PurgeRule.rule(for: "Trash", in: parsed, separator: "/")?.age, 30 * 86400)
        XCTAssertEqual(PurgeRule.rule(for: "Lists/Swift", in: parsed, separator: "/")?.includeFlagged, true)
        XCTAssertNil(PurgeRule.rule(for: "Lists/Swift/Old", in: parsed, separator: "/"), "% stops at the separator")
        XCTAssertNil(PurgeRule.rule(for: "INBOX", in: parsed, separator: "/"))
        XCTAssertEqual(config.mboxWriteLocks, [.dotlock, .fcntl])

        let dates: [(String, Int64?)] = [
            ("Fri, 15 Jan 2027 08:00:00 +0000", 1_800_000_000),
            ("15 Jan 2027 10:00:00 +0200", 1_800_000_000),
            ("Fri, 15 Jan 2027 03:00 EST", 1_800_000_000),
            ("Fri,15 Jan 27 08:00:00 GMT (UTC)", 1_800_000_000),
            ("Thu, 1 Jan 1970 00:00:00 -0000", 0),
            ("  Mon, 29 Feb 2016 12:30:15 -0130", 1_456_749_015 + 5400),
            ("yesterday", nil), ("Fri, 15 Foo 2027 08:00:00 +0000", nil), ("15 Jan 2027", nil), ("32 Jan 2027 08:00 +0000", nil),
        ]
        for (text, expected) in dates { XCTAssertEqual(RFC5322Date.parse(text), expected, text) }
        for t in [Self.now, Self.now - 40 * Self.day, Self.now - 1234567] {
            XCTAssertEqual(RFC5322Date.parse(Self.rfc5322(t)), t, Self.rfc5322(t))
        }
        let header = Array("Subject: x\r\nDATE: Fri, 15 Jan 2027\r\n 08:00:00 +0000\r\nX: y\r\n\r\nDate: not this\n".utf8)
        XCTAssertEqual(MessageHeader.field("date", in: header), " Fri, 15 Jan 2027  08:00:00 +0000")
        XCTAssertNil(MessageHeader.field("date", in: Array("Subject: x\n\nDate: in the body\n".utf8)))
        // Read from files: a Date: after 8 KiB of header is found; one in the body is not.
        let long = "\(dir)/long"
        TestFS.write(long, "X-Long: " + String(repeating: "x", count: 9000) + "\nDate: Fri, 15 Jan 2027 08:00:00 +0000\n\nbody\n")
        XCTAssertEqual(MessageHeader.date(ofFile: long), 1_800_000_000)
        let body = "\(dir)/body"
        TestFS.write(body, "Subject: x\r\n\r\nDate: Fri, 15 Jan 2027 08:00:00 +0000\r\n")
        XCTAssertNil(MessageHeader.date(ofFile: body))
        XCTAssertNil(MessageHeader.date(ofFile: "\(dir)/missing"))
    }

    /// A dry run reports what the real run then removes, and changes nothing meanwhile; the real
    /// run keeps every other UID and N, and takes the bytes off maildirsize.
    func testDryRunThenPurge() throws {
        let (folder, sizes, uids) = try fixture()
        TestFS.write("\(folder.mailRoot)/maildirsize", "1000000S,100C\n\(sizes.reduce(0, +)) 6\n")
        let before = snapshot(folder.mailRoot)
        let criteria = PurgeCriteria(age: 30 * 86400, useDeliveryTime: true, skipFlagged: true)
        let dry = try folder.purge(dryRun: true, options: MaintenanceFixture.lockPolicy) { criteria.selects($0, now: Self.now) }
        XCTAssertEqual(snapshot(folder.mailRoot), before, "a dry run changes nothing")
        XCTAssertEqual(dry.total, PurgeTally(bytes: sizes.reduce(0, +), messages: 6))
        XCTAssertEqual(dry.expunged, PurgeTally(bytes: sizes[0] + sizes[2] + sizes[5], messages: 3))
        XCTAssertEqual(dry.removed.map { UInt32($0.split(separator: " ")[1])! }, [uids[0], uids[2], uids[5]].sorted())

        let real = try folder.purge(dryRun: false, options: MaintenanceFixture.lockPolicy) { criteria.selects($0, now: Self.now) }
        XCTAssertEqual(real.total, dry.total)
        XCTAssertEqual(real.expunged, dry.expunged)
        XCTAssertEqual(real.removed, dry.removed)
        XCTAssertEqual(real.remaining, PurgeTally(bytes: sizes[1] + sizes[3] + sizes[4], messages: 3))
        let list = try XCTUnwrap(try folder.uidList.read())
        let survivors = [uids[1], uids[3], uids[4]].sorted()
        XCTAssertEqual(list.records.map(\.uid), survivors)
        XCTAssertEqual(list.nextUID, 7)
        XCTAssertEqual(try QuotaRoot(root: folder.mailRoot).current()?.usage, QuotaUsage(bytes: real.remaining.bytes, messages: 3))
        XCTAssertEqual(try FolderScan.scan(folder).messages.compactMap(\.uid), survivors)
    }

    /// mbox messages are judged by the same criteria: D and F of X-Status, the From_ line's date.
    func testMboxMessagesUseTheSameCriteria() throws {
        let path = "\(dir)/mbox"
        func from(_ days: Int64) -> String {
            // As Postfix writes it (its local time; days apart, so the zone does not matter).
            return "From s@example.org  \(asctime(Self.now - days * Self.day))"
        }
        TestFS.write(path, """
        \(from(40))
        Subject: old
        Status: RO
        X-Status: D

        body

        \(from(40))
        Subject: old flagged
        X-Status: FD

        body

        \(from(1))
        Subject: new

        body

        """)
        let messages = try Mbox.scan(path: path)
        XCTAssertEqual(messages.count, 3)
        let now = Self.now
        XCTAssertEqual(messages.filter { PurgeCriteria().selects($0, now: now) }.map(\.index), [0, 1])
        XCTAssertEqual(messages.filter { PurgeCriteria(skipFlagged: true).selects($0, now: now) }.map(\.index), [0])
        XCTAssertEqual(messages.filter { PurgeCriteria(age: 30 * 86400, useDeliveryTime: true).selects($0, now: now) }.map(\.index), [0, 1])
        XCTAssertEqual(messages.filter { PurgeCriteria(age: 30 * 86400, invert: true).selects($0, now: now) }.map(\.index), [2])
    }

    func asctime(_ t: Int64) -> String {
        var time = time_t(t)
        var parts = tm()
        gmtime_r(&time, &parts)
        var buffer = [CChar](repeating: 0, count: 64)
        strftime(&buffer, 64, "%a %b %e %H:%M:%S %Y", &parts)
        return String(cString: buffer)
    }

    /// -E: duplicate records older than the asked age (never younger than duplicate_expire),
    /// stale tmp/ files of every folder; a dry run counts and removes nothing.
    func testPruneRemovesOnlyWhatIsOld() throws {
        let store = MailStore(config: try NamesTests.config([("partition-default", "\(dir)/mail"), ("duplicate_expire", "1d")]))
        try store.prepare()
        let folder = Folder(path: "\(dir)/mail/alice", mailRoot: "\(dir)/mail/alice", name: "INBOX", partition: "\(dir)/mail")
        try folder.create()
        let db = DuplicateDB(directory: store.duplicatesDirectory, expiry: 86400)
        for (id, age) in [("<ten-days@x>", 10), ("<two-days@x>", 2), ("<hours@x>", 0)] {
            let key = DuplicateDB.key(messageID: id, date: nil, mailbox: "alice")!
            db.record(key, seconds: time(nil) - age * 86400 - 3600)
        }
        TestFS.write("\(folder.path)/tmp/stale", "x")
        TestFS.age("\(folder.path)/tmp/stale", by: 37 * 3600)
        TestFS.write("\(folder.path)/tmp/fresh", "x")

        let dry = store.prune(duplicatesOlderThan: 5 * 86400, folders: [folder], dryRun: true)
        XCTAssertEqual(dry.duplicateRecords, 1)
        XCTAssertEqual(dry.temporaryFiles, 1)
        XCTAssertEqual(TestFS.list("\(folder.path)/tmp"), ["fresh", "stale"])
        let real = store.prune(duplicatesOlderThan: 5 * 86400, folders: [folder], dryRun: false)
        XCTAssertEqual(real, dry)
        XCTAssertEqual(TestFS.list("\(folder.path)/tmp"), ["fresh"])
        // Asked for 1 hour, but duplicate_expire (1 day) is the floor: the 2-day record goes,
        // the one of a few hours stays.
        XCTAssertEqual(store.prune(duplicatesOlderThan: 3600, folders: [], dryRun: false).duplicateRecords, 1)
        XCTAssertTrue(db.contains(DuplicateDB.key(messageID: "<hours@x>", date: nil, mailbox: "alice")!))
    }

    /// Path -> bytes of every file below `dir` (names and contents).
    func snapshot(_ dir: String) -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        func walk(_ p: String) {
            for name in TestFS.list(p) {
                let full = "\(p)/\(name)"
                if Files.isDirectory(full) { walk(full) } else { out[full] = TestFS.read(full) ?? [] }
            }
        }
        walk(dir)
        return out
    }
}
