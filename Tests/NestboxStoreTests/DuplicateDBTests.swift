#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// The duplicate database's logs on disk: what a lookup sees at each step of a delivery, after a
/// torn write, beside a prune, and with records of the earlier one-file-per-key layout.
final class DuplicateDBTests: TempDirTestCase {
    private var root: String { dir }
    var db: DuplicateDB { DuplicateDB(directory: "\(root)/dup", expiry: 3600) }
    let key = DuplicateDB.key(messageID: "<m@example.org>", date: "Mon, 30 Nov 2026 12:00:00 +0000", mailbox: "alice")!

    func key(_ id: String, mailbox: String = "alice") -> [UInt8] {
        DuplicateDB.key(messageID: id, date: nil, mailbox: mailbox)!
    }

    /// The one log of the database.
    func logPath() throws -> String {
        let logs = TestFS.list("\(root)/dup")
        XCTAssertEqual(logs.count, 1, "\(logs)")
        return "\(root)/dup/\(try XCTUnwrap(logs.first))"
    }

    func testPendingRecordSuppressesOnlyWhileItsFileExists() throws {
        XCTAssertEqual(mkdir("\(root)/new", 0o700), 0)
        XCTAssertEqual(mkdir("\(root)/cur", 0o700), 0)
        let message = "\(root)/new/1.M1P1Q1.host,S=10,W=11"
        db.recordPending(key, messagePath: message)
        XCTAssertFalse(db.contains(key), "no file: the retry must be stored")
        TestFS.write(message, "0123456789")
        XCTAssertTrue(db.contains(key), "the file is there: the retry must be suppressed")
        XCTAssertEqual(rename(message, "\(root)/cur/1.M1P1Q1.host,S=10,W=11:2,S"), 0)
        XCTAssertTrue(db.contains(key), "flags set by Dovecot: still the same message")
    }

    func testFinalRecordOutlivesTheMessageAndRecordsAreLinesOfOneLog() throws {
        XCTAssertEqual(mkdir("\(root)/new", 0o700), 0)
        let d = db
        d.recordPending(key, messagePath: "\(root)/new/x")
        d.record(key)
        XCTAssertTrue(d.contains(key), "expunged by the user since: still suppressed")
        XCTAssertFalse(d.contains(self.key("<other@example.org>")))
        XCTAssertFalse(d.contains(self.key("<m@example.org>", mailbox: "bob")), "another mailbox is another delivery")
        // One log for the bucket, two lines, no file per record.
        let path = try logPath()
        XCTAssertTrue(path.hasSuffix(".log"))
        let lines = TestFS.readText(path)!.split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        XCTAssertTrue(lines[0].hasPrefix("P "), String(lines[0]))
        XCTAssertTrue(lines[1].hasPrefix("F "), String(lines[1]))
        XCTAssertTrue(lines[1].hasSuffix(" -"), String(lines[1]))
        XCTAssertFalse(lines[1].contains("\u{0}"), "the key is encoded")
    }

    func testExpiredRecordsAreIgnored() throws {
        db.record(key, seconds: time(nil) - 7200)
        XCTAssertFalse(db.contains(key))
        db.record(key)
        XCTAssertTrue(db.contains(key))
    }

    /// A record cut by a power cut (at any byte) never suppresses a message, and never hides a
    /// record appended after it. Among the cuts: the one that leaves "…%00bob" of a record for
    /// mailbox "bobby", which would look like a whole record for "bob" without the length field.
    func testTornRecordNeitherSuppressesNorHidesTheNextOne() throws {
        let bobby = key("<m@example.org>", mailbox: "bobby")
        let bob = key("<m@example.org>", mailbox: "bob")
        let line = DuplicateDB.line(.final, seconds: Int64(time(nil)), encodedKey: DuplicateDB.encode(bobby), path: nil)
        XCTAssertEqual(DuplicateDB.bucket(bob), DuplicateDB.bucket(bob))
        for cut in 1..<line.count {
            let dir = "\(root)/cut\(cut)"
            let d = DuplicateDB(directory: dir, expiry: 3600)
            TestFS.mkdirs(dir)
            // The torn record in the log bob's key would be looked up in.
            let path = d.logPath(DuplicateDB.bucket(bob))
            TestFS.write(path, Array(line[0..<cut]))
            XCTAssertFalse(d.contains(bob), "cut at \(cut): \(String(decoding: line[0..<cut], as: UTF8.self))")
            XCTAssertFalse(d.contains(bobby), "cut at \(cut)")
            d.record(bob)
            XCTAssertTrue(d.contains(bob), "cut at \(cut): the record after a torn one is seen")
            XCTAssertFalse(d.contains(bobby), "cut at \(cut)")
        }
    }

    /// nestbox-lmtpd's index of each log gives every lookup the answer a full read gives: two
    /// databases on the same logs, one indexed and one not, are asked about every key after
    /// each step of a random history: records by either or by a third (as by another process),
    /// expired records, pending records whose files come and go, torn records, records joined
    /// to the line before them, prunes, and the log removed by a prune and made again.
    func testTheIndexAnswersAsAFullReadDoes() throws {
        let directory = "\(root)/dup"
        let indexed = DuplicateDB(directory: directory, expiry: 3600, indexed: true)
        let plain = DuplicateDB(directory: directory, expiry: 3600)
        let other = DuplicateDB(directory: directory, expiry: 3600)
        let writers = [indexed, plain, other]
        TestFS.mkdirs("\(root)/new")
        TestFS.mkdirs(directory)
        // Keys of one log, so that it holds many records and empties entirely when pruned.
        let keys = Array((0..<20_000).lazy.map { self.key("<\($0)@x>") }.filter { DuplicateDB.bucket($0) == 7 }.prefix(24))
        XCTAssertEqual(keys.count, 24)
        var state: UInt64 = 0x9e3779b97f4a7c15
        func random(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
        let now = Int(time(nil))
        for step in 0..<600 {
            let k = random(keys.count)
            let writer = writers[random(writers.count)]
            let message = "\(root)/new/m\(k)"
            switch random(11) {
            case 0, 1: writer.record(keys[k])
            case 2: writer.record(keys[k], seconds: now - 7200)
            case 3, 4: writer.recordPending(keys[k], messagePath: message)
            case 5: TestFS.write(message, "x")
            case 6: unlink(message)
            case 7:
                let line = DuplicateDB.line(.final, seconds: Int64(now), encodedKey: DuplicateDB.encode(keys[k]), path: nil)
                let fd = open(indexed.logPath(DuplicateDB.bucket(keys[k])), O_WRONLY | O_APPEND | O_CREAT, 0o600)
                XCTAssertGreaterThanOrEqual(fd, 0)
                let cut = 1 + random(line.count - 1)
                XCTAssertEqual(line.withUnsafeBytes { write(fd, $0.baseAddress, cut) }, cut)
                close(fd)
            case 8: if random(8) == 0 { _ = try DuplicateDB(directory: directory, expiry: 3600).prune(olderThan: 3600) }
            case 9:
                switch random(3) {
                case 0:
                    // Everything expires: the log goes, and the next record makes a new one.
                    _ = try DuplicateDB(directory: directory, expiry: 0).prune(olderThan: -10)
                default:
                    // A whole record written without its leading LF (a short write finished
                    // by a second one): it joins the line before it.
                    let line = DuplicateDB.line(.final, seconds: Int64(now), encodedKey: DuplicateDB.encode(keys[k]), path: nil)
                    let fd = open(indexed.logPath(DuplicateDB.bucket(keys[k])), O_WRONLY | O_APPEND | O_CREAT, 0o600)
                    XCTAssertGreaterThanOrEqual(fd, 0)
                    XCTAssertEqual(line.dropFirst().withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, line.count - 1)
                    close(fd)
                }
            default: break
            }
            for (i, key) in keys.enumerated() {
                XCTAssertEqual(indexed.contains(key), plain.contains(key), "step \(step), key \(i)")
            }
        }
    }

    /// An index entry that leads to another key's record (two keys whose hashes meet) never
    /// suppresses: the whole key is compared, and the log read.
    func testAnIndexHitOfAnotherKeyReadsTheLog() throws {
        let a = key("<a@x>")
        let b = try XCTUnwrap((0..<10_000).lazy.map { self.key("<b\($0)@x>") }.first { DuplicateDB.bucket($0) == DuplicateDB.bucket(a) })
        let d = DuplicateDB(directory: "\(root)/dup", expiry: 3600, indexed: true)
        d.record(a)
        XCTAssertTrue(d.contains(a))
        XCTAssertFalse(d.contains(b))
        let fd = open(d.logPath(DuplicateDB.bucket(a)), O_RDONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var st = stat()
        XCTAssertEqual(fstat(fd, &st), 0)
        var index = LogIndex()
        XCTAssertTrue(index.refresh(fd: fd, st: st))
        let (ea, eb) = (DuplicateDB.encode(a), DuplicateDB.encode(b))
        let (ha, hb) = (ea.withUnsafeBufferPointer { LogIndex.hash($0, 0..<$0.count) }, eb.withUnsafeBufferPointer { LogIndex.hash($0, 0..<$0.count) })
        XCTAssertEqual(index.lookup(eb, oldest: 0, fd: fd, st: st), .absent)
        index.latest[hb] = index.latest[ha]
        XCTAssertEqual(index.lookup(eb, oldest: 0, fd: fd, st: st), .readTheLog)
        XCTAssertEqual(index.lookup(ea, oldest: 0, fd: fd, st: st), .found)
        XCTAssertEqual(index.lookup(ea, oldest: Int64(time(nil)) + 10, fd: fd, st: st), .readTheLog, "expired")
    }

    func testGarbageInALogIsIgnored() throws {
        let d = db
        d.record(key)
        let path = try logPath()
        let fd = open(path, O_WRONLY | O_APPEND)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let junk: [UInt8] = Array("\nF 9 x\n\u{0}\u{0}\u{0}\nP 99999999999999999999999 1 a b\nF 12 1 %3C -\n".utf8) + [0xff, 0xfe, 10]
        XCTAssertEqual(junk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, junk.count)
        close(fd)
        let fresh = db
        XCTAssertTrue(fresh.contains(key))
        XCTAssertFalse(fresh.contains(self.key("<n@example.org>")))
        let other = self.key("<o@example.org>")
        fresh.record(other)
        XCTAssertTrue(fresh.contains(other))
        XCTAssertTrue(fresh.contains(key))
    }

    func testPruneDropsExpiredRecordsAndPendingOnesMadeFinal() throws {
        let d = db
        let old = key("<old@x>"), kept = key("<kept@x>"), pending = key("<pending@x>")
        d.record(old, seconds: time(nil) - 7200)
        d.recordPending(kept, messagePath: "\(root)/new/kept")
        d.record(kept)
        d.recordPending(pending, messagePath: "\(root)/new/pending")
        TestFS.mkdirs("\(root)/new")
        TestFS.write("\(root)/new/pending", "x")
        XCTAssertEqual(try d.prune(olderThan: 3600, dryRun: true), 2)
        XCTAssertEqual(try d.prune(olderThan: 3600), 2, "the old final record, and kept's pending one")
        XCTAssertEqual(try d.prune(olderThan: 3600), 0)
        XCTAssertFalse(d.contains(old))
        XCTAssertTrue(d.contains(kept))
        XCTAssertTrue(d.contains(pending))
        let all = TestFS.list("\(root)/dup").map { TestFS.readText("\(root)/dup/\($0)") ?? "" }.joined()
        XCTAssertEqual(all.split(separator: "\n").count, 2)
        // Everything expired: the logs go.
        XCTAssertEqual(try DuplicateDB(directory: "\(root)/dup", expiry: 0).prune(olderThan: -10), 2)
        XCTAssertEqual(TestFS.list("\(root)/dup"), [])
    }

    /// Appends of one database (as of one process) beside prunes of another, each on its own
    /// descriptors: no record is lost, although every prune replaces the logs it rewrites.
    func testNoRecordIsLostBesideAPrune() throws {
        let writer = DuplicateDB(directory: "\(root)/dup", expiry: 3600)
        let count = 500
        let directory = "\(root)/dup"
        final class Pruner {
            let db: DuplicateDB
            var stop = false
            var rounds = 0
            init(_ db: DuplicateDB) { self.db = db }
        }
        let pruner = Pruner(DuplicateDB(directory: directory, expiry: 3600))
        var thread = pthread_t()
        let box = Unmanaged.passRetained(pruner).toOpaque()
        XCTAssertEqual(pthread_create(&thread, nil, { arg in
            let p = Unmanaged<Pruner>.fromOpaque(arg!).takeRetainedValue()
            while !p.stop {
                _ = try? p.db.prune(olderThan: 3600)
                p.rounds += 1
            }
            return nil
        }, box), 0)
        // Written until the pruner has rewritten the logs several times meanwhile.
        // Keys of two logs only: each prune round is quick, and every one of them replaces a
        // log the writer is appending to.
        var keys: [[UInt8]] = []
        var n = 0
        while keys.count < count || pruner.rounds < 3 {
            let k = key("<\(n)@x>")
            n += 1
            guard DuplicateDB.bucket(k) < 2 else { continue }
            writer.recordPending(k, messagePath: "\(directory)/nowhere/\(n)")
            writer.record(k)
            keys.append(k)
        }
        pruner.stop = true
        pthread_join(thread, nil)
        let reader = DuplicateDB(directory: directory, expiry: 3600)
        let lost = keys.indices.filter { !reader.contains(keys[$0]) }
        XCTAssertEqual(lost.count, 0, "records lost beside a prune, among them \(lost.prefix(10))")
    }

    /// Records of the earlier layout (`<xx>/<hash>`, the key alone, mtime the time) are still
    /// honoured, and pruned with their directories once expired.
    func testRecordsOfTheEarlierLayoutAreHonouredAndPruned() throws {
        let h = hexString(withUnsafeBytes(of: DuplicateDB.hash(key).bigEndian) { Array($0) })
        let legacy = "\(root)/dup/\(h.prefix(2))/\(h)"
        TestFS.mkdirs("\(root)/dup/\(h.prefix(2))")
        TestFS.write(legacy, key)
        XCTAssertTrue(db.contains(key))
        XCTAssertEqual(try db.prune(olderThan: 3600), 0)
        TestFS.age(legacy, by: 7200)
        XCTAssertFalse(db.contains(key))
        XCTAssertEqual(try db.prune(olderThan: 3600), 1)
        XCTAssertEqual(TestFS.list("\(root)/dup"), [])
    }

    /// nestbox-lmtpd at start: every log made and kept open; records of the earlier layout are
    /// still found in the buckets that have them, and appends go to the logs opened at start.
    func testOpenAllMakesEveryLogAndKeepsTheEarlierLayout() throws {
        let h = hexString(withUnsafeBytes(of: DuplicateDB.hash(key).bigEndian) { Array($0) })
        TestFS.mkdirs("\(root)/dup/\(h.prefix(2))")
        TestFS.write("\(root)/dup/\(h.prefix(2))/\(h)", key)
        let opened = db
        opened.openAll()
        let logs = TestFS.list("\(root)/dup").filter { $0.hasSuffix(".log") }
        XCTAssertEqual(logs.count, 256)
        XCTAssertEqual(logs.first, "00.log")
        XCTAssertEqual(logs.last, "ff.log")
        XCTAssertTrue(opened.contains(key), "the earlier layout's record")
        let other = self.key("<other@example.org>")
        XCTAssertFalse(opened.contains(other))
        opened.record(other)
        XCTAssertTrue(opened.contains(other))
        XCTAssertTrue(db.contains(other), "in the log at its path, for every other process")
        opened.openAll()  // again: nothing changes
        XCTAssertEqual(TestFS.list("\(root)/dup").filter { $0.hasSuffix(".log") }, logs)
        XCTAssertTrue(opened.contains(other))
    }

    /// A database directory replaced by a link to elsewhere: no record is written there, and
    /// prune touches nothing there.
    func testNoLogIsWrittenThroughALinkedDirectory() throws {
        TestFS.mkdirs("\(root)/mail/.nestbox")
        TestFS.mkdirs("\(root)/elsewhere")
        XCTAssertEqual(symlink("\(root)/elsewhere", "\(root)/mail/.nestbox/duplicates"), 0)
        let d = DuplicateDB(directory: "\(root)/mail/.nestbox/duplicates", expiry: 3600)
        d.recordPending(key, messagePath: "\(root)/mail/new/x")
        d.record(key)
        XCTAssertFalse(d.contains(key))
        XCTAssertEqual(TestFS.list("\(root)/elsewhere"), [])
        TestFS.write("\(root)/elsewhere/00.log", "\nF 12 1 x -")
        TestFS.mkdirs("\(root)/elsewhere/ab")
        TestFS.write("\(root)/elsewhere/ab/old", "x")
        TestFS.age("\(root)/elsewhere/ab/old", by: 7200)
        XCTAssertThrowsError(try d.prune(olderThan: 0))
        XCTAssertEqual(TestFS.list("\(root)/elsewhere"), ["00.log", "ab"])
        XCTAssertEqual(TestFS.list("\(root)/elsewhere/ab"), ["old"])
    }
}
