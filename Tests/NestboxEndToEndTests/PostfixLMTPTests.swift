#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NestboxStore
import XCTest

/// Postfix -> lmtp(8) -> UNIX socket -> nestbox-lmtpd, end to end (PostfixTestCase: a private
/// Postfix per test), whose main.cf takes its delivery settings from the sample
/// postfix/main.cf.lmtp with the socket path /run/nestbox/lmtp replaced by the test's socket,
/// so the sample is what is tested. nestbox-lmtpd runs from the build as root, binds its socket
/// (0660, vmail, group postfix via lmtpsocket_group) and becomes vmail. Mail is read back with
/// doveadm. Needs root (as in CI), Postfix, swaks, doveadm.
final class PostfixLMTPTests: PostfixTestCase {
    static let sampleSocket = "/run/nestbox/lmtp"

    var socketPath = ""
    var server: LMTPDaemon!

    override func extraDiagnostics() -> String {
        server.map { "--- nestbox-lmtpd ---\n\($0.log)" } ?? ""
    }

    // MARK: - setup and teardown

    override func setUpWithError() throws {
        try super.setUpWithError()
        try preparePostfixInstance(label: "nbpflmtp", tools: ["/usr/bin/doveadm"])
        guard getgrnam("postfix") != nil else {
            XCTFail("no group postfix (is Postfix installed?)")
            throw failure("no postfix group")
        }
        guard FileManager.default.isExecutableFile(atPath: Harness.binary("nestbox-lmtpd")) else {
            XCTFail("built program not found: \(Harness.binary("nestbox-lmtpd"))")
            throw failure("no binary")
        }
        socketPath = "\(base)/run/lmtp"
        nestboxConf = try Harness.writeConfig(in: base, [
            "partition-default": mailRoot,
            "mail_owner": Harness.mailOwner,
            "servername": "mx.\(Self.localDomain)",
            "virtdomains": "userid",
            "defaultdomain": Self.localDomain,
            "autocreate_post": "no",
            "autocreate_quota": "-1",
            "lmtpsocket": socketPath,
            "lmtpsocket_group": "postfix",
            "lmtp_listen": "",
        ])
        server = LMTPDaemon(configPath: nestboxConf, logPath: "\(base)/lmtpd.log", socketPath: socketPath, port: nil)
        try server.start()

        let samplePath = "\(Harness.packageRoot)/postfix/main.cf.lmtp"
        let sample = try Self.sampleSettings(samplePath)
        let transport = "lmtp:unix:\(Self.sampleSocket)"
        XCTAssertTrue(sample.contains { $0 == ("mailbox_transport", transport) }, "\(samplePath): mailbox_transport = \(transport)")
        XCTAssertTrue(sample.contains { $0 == ("virtual_transport", transport) }, "\(samplePath): virtual_transport = \(transport)")
        XCTAssertTrue(sample.contains { $0.0 == "lmtp_destination_recipient_limit" }, "\(samplePath): lmtp_destination_recipient_limit")
        XCTAssertTrue(Harness.read(samplePath).contains("lmtpsocket_group: postfix"), "\(samplePath): socket permission notes")
        // The sample with the test's socket.
        let adapted = sample.map { ($0.0, $0.1.replacingOccurrences(of: Self.sampleSocket, with: socketPath)) }
        try writeMainCf(sample: adapted, header: "written by PostfixLMTPTests from postfix/main.cf.lmtp")
        try writeMasterCf(header: "written by PostfixLMTPTests: a stock master.cf (lmtp included), smtpd on loopback")
        try startPostfix()
    }

    override func tearDown() {
        stopPostfix()
        server?.stop()
        server = nil
        super.tearDown()
    }

    // MARK: - the cases

    /// The socket Postfix writes to: 0660, owned by vmail, group postfix.
    func testSocketIsWritableByPostfixOnly() throws {
        var st = stat()
        XCTAssertEqual(lstat(socketPath, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFSOCK)
        XCTAssertEqual(st.st_mode & 0o7777, 0o660, "socket mode")
        XCTAssertEqual(st.st_uid, try XCTUnwrap(getpwnam(Harness.mailOwner)).pointee.pw_uid, "socket owner")
        XCTAssertEqual(st.st_gid, try XCTUnwrap(getgrnam("postfix")).pointee.gr_gid, "socket group (lmtpsocket_group: postfix)")
    }

    /// Mail to alice goes through local(8) -> mailbox_transport = lmtp:unix:<socket> and
    /// arrives; doveadm shows it with the UID nestbox-lmtpd logged, and the same body.
    func testKnownUserReceivesMessageThroughLMTP() throws {
        try makeMaildir("alice")
        let token = Self.token()
        let body = "Hello Alice, \(token).\nSecond line.\n.a line that starts with a dot\n\nLast line."
        let rcpt = "alice@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "lmtp \(token)", body: body)
        let line = try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0")
        XCTAssertTrue(line.contains("postfix/lmtp["), "delivered by Postfix's lmtp client: \(line)")
        XCTAssertTrue(line.contains(socketPath), "relay is the test's socket: \(line)")
        XCTAssertTrue(line.contains("250 2.0.0 Ok: delivered"), line)

        let found = try waitForMessage(in: "\(mailRoot)/alice/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["alice/new/\(found)"], "stored exactly once")
        let text = Harness.read("\(mailRoot)/alice/new/\(found)")
        XCTAssertTrue(text.hasPrefix("Return-Path: <\(Self.sender)>\nReceived: from mx.\(Self.localDomain) (unix socket)\n"),
                      String(text.prefix(400)))
        XCTAssertTrue(text.contains("(Nestbox) with LMTP id "), text)
        XCTAssertFalse(text.contains("\r"))
        let storedBody = String(text[text.range(of: "\n\n")!.upperBound...])
        XCTAssertEqual(storedBody.trimmingCharacters(in: .newlines), body, "body changed on the way")

        // The UID nestbox-lmtpd logged, the uidlist's and Dovecot's are one.
        let log = server.log
        guard let m = log.range(of: #"to=<alice@example\.test> mailbox=alice uid=[0-9]+"#, options: .regularExpression) else {
            return XCTFail("no delivery line in the nestbox-lmtpd log:\n\(log)")
        }
        let uid = String(log[m].split(separator: "=").last!)
        let list = try UIDList.parse(Array(try Data(contentsOf: URL(fileURLWithPath: "\(mailRoot)/alice/dovecot-uidlist"))))
        XCTAssertEqual(list.uidsByStem()[MaildirName(found).stem].map(String.init), uid)
        let dove = try Dovecot(mailRoot: "\(mailRoot)/alice", user: "alice")
        let fetched = try dove.fetch("uid body", mailbox: "INBOX")
        XCTAssertEqual(fetched.count, 1)
        XCTAssertEqual(fetched.first?["uid"], uid, "doveadm fetch uid")
        XCTAssertEqual(fetched.first?["body"]?.trimmingCharacters(in: .newlines), body, "doveadm fetch body")
    }

    /// An unknown user is refused at RCPT (550 5.1.1): Postfix bounces.
    func testUnknownUserBounces() throws {
        try makeMaildir("alice")
        let rcpt = "nobody-here@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "to nobody", body: "Nobody reads this. \(Self.token())")
        let line = try requireStatus(qid: qid, recipient: rcpt, "bounced", dsn: "5.1.1")
        XCTAssertTrue(line.contains("550 5.1.1 User unknown"), line)
        XCTAssertTrue(line.contains("RCPT TO"), "refused at RCPT: \(line)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(mailRoot)/nobody-here"))
        XCTAssertTrue(server.log.contains("to=<\(rcpt)> status=bounced (5.1.1 User unknown"), server.log)
    }

    /// recipient_delimiter = +: alice+Work@ reaches nestbox-lmtpd whole and lands in .Work.
    func testExtensionDeliversIntoFolderWithPostRight() throws {
        try makeMaildir("alice")
        let work = "\(mailRoot)/alice/.Work"
        try makeDir(work)
        for sub in ["cur", "new", "tmp"] { try makeDir("\(work)/\(sub)") }
        for (name, text) in [("maildirfolder", ""), ("dovecot-acl", "anyone p\n")] {
            try text.write(toFile: "\(work)/\(name)", atomically: false, encoding: .utf8)
            chmod("\(work)/\(name)", 0o600)
            try Harness.chownToMailOwner("\(work)/\(name)")
        }
        let token = Self.token()
        let rcpt = "alice+Work@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "work \(token)", body: "For the Work folder. \(token)")
        try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0")
        let found = try waitForMessage(in: "\(work)/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["alice/.Work/new/\(found)"], server.log)
    }

    /// The sample's virtual_transport line: user@virtual-domain lands in the domain's area.
    func testVirtualDomainThroughVirtualTransport() throws {
        try makeMaildir("domain/\(Self.virtualDomain)/dave")
        let token = Self.token()
        let rcpt = "dave@\(Self.virtualDomain)"
        let qid = try send(to: rcpt, subject: "virtual \(token)", body: "For dave. \(token)")
        let line = try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0")
        XCTAssertTrue(line.contains("postfix/lmtp["), line)
        let found = try waitForMessage(in: "\(mailRoot)/domain/\(Self.virtualDomain)/dave/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["domain/\(Self.virtualDomain)/dave/new/\(found)"])
    }

    /// Several recipients of one message in one LMTP transaction: each its own outcome (alice
    /// and bob delivered, carol over quota deferred 4.2.2 at RCPT).
    func testSeveralVirtualRecipientsEachTheirOwnOutcome() throws {
        for u in ["alice", "bob"] { try makeMaildir("domain/\(Self.virtualDomain)/\(u)") }
        try makeMaildir("domain/\(Self.virtualDomain)/carol", maildirsize: "1000S\n5000 1\n")
        let token = Self.token()
        let rcpts = ["alice", "bob", "carol"].map { "\($0)@\(Self.virtualDomain)" }
        let qid = try send(to: rcpts.joined(separator: ","), subject: "three \(token)", body: "For three. \(token)")
        try requireStatus(qid: qid, recipient: rcpts[0], "sent", dsn: "2.0.0")
        try requireStatus(qid: qid, recipient: rcpts[1], "sent", dsn: "2.0.0")
        let carol = try requireStatus(qid: qid, recipient: rcpts[2], "deferred", dsn: "4.2.2")
        XCTAssertTrue(carol.contains("452 4.2.2 Mailbox full"), carol)
        XCTAssertEqual(filesContaining(token, under: mailRoot).sorted().map { $0.components(separatedBy: "/new/")[0] },
                       ["domain/\(Self.virtualDomain)/alice", "domain/\(Self.virtualDomain)/bob"])
        // One LMTP transaction: the message was spooled once for both (one transaction id).
        let ids = server.log.split(separator: "\n").filter { $0.contains("status=sent (delivered)") && $0.contains(Self.virtualDomain) }
            .compactMap { $0.split(separator: " ").dropFirst().first }
        XCTAssertEqual(ids.count, 2)
        XCTAssertEqual(Set(ids).count, 1, "one LMTP transaction for both: \(ids)")
    }
}
