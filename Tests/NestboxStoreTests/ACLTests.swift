import XCTest
import NestboxSupport
@testable import NestboxStore

/// dovecot-acl: parsing and the `p` (post) right delivery needs.
final class ACLTests: TempDirTestCase {
    func testParseWithCommentsAndNegativeRights() {
        let acl = ACL.parse("""
        # shared folder rights
        anyone lr

          user=bob lrwstipekxa
        -user=eve p
        authenticated\tlrp
        owner lrwstipekxa   
        group=staff lrs
        # the end
        """)
        XCTAssertEqual(acl.entries, [
            ACL.Entry(identifier: "anyone", rights: ["l", "r"], negative: false),
            ACL.Entry(identifier: "user=bob", rights: Set("lrwstipekxa"), negative: false),
            ACL.Entry(identifier: "user=eve", rights: ["p"], negative: true),
            ACL.Entry(identifier: "authenticated", rights: ["l", "r", "p"], negative: false),
            ACL.Entry(identifier: "owner", rights: Set("lrwstipekxa"), negative: false),
            ACL.Entry(identifier: "group=staff", rights: ["l", "r", "s"], negative: false),
        ])
    }

    /// An administrator's file with CRLF line endings means the same (Dovecot strips the CR).
    func testParseCRLFFile() {
        let acl = ACL.parse("# shared\r\nanyone lr\r\nuser=bob p\r\n")
        XCTAssertEqual(acl.entries, [
            ACL.Entry(identifier: "anyone", rights: ["l", "r"], negative: false),
            ACL.Entry(identifier: "user=bob", rights: ["p"], negative: false),
        ])
        XCTAssertTrue(acl.mayPost("bob", owner: nil))
        XCTAssertFalse(acl.mayPost(nil, owner: nil))
    }

    func testParseSkipsLinesWithoutRights() {
        XCTAssertEqual(ACL.parse("anyone\n#x p\n\n").entries, [])
    }

    struct Case {
        let acl: String
        let identity: String?
        let owner: String?
        let mayPost: Bool
        let why: String
    }

    static let cases: [Case] = [
        Case(acl: "", identity: nil, owner: nil, mayPost: false, why: "no ACL: anonymous may not post"),
        Case(acl: "anyone p", identity: nil, owner: nil, mayPost: true, why: "anyone p covers anonymous"),
        Case(acl: "anonymous p", identity: nil, owner: nil, mayPost: true, why: "anonymous is a synonym of anyone"),
        Case(acl: "anyone p", identity: "bob", owner: nil, mayPost: true, why: "anyone p covers bob"),
        Case(acl: "anyone lr", identity: nil, owner: nil, mayPost: false, why: "no p"),
        Case(acl: "authenticated p", identity: nil, owner: nil, mayPost: false, why: "anonymous is not authenticated"),
        Case(acl: "authenticated p", identity: "bob", owner: nil, mayPost: true, why: "bob is authenticated"),
        Case(acl: "user=bob p", identity: "bob", owner: nil, mayPost: true, why: "named user"),
        Case(acl: "user=bob p", identity: "eve", owner: nil, mayPost: false, why: "another user"),
        Case(acl: "user=bob p", identity: nil, owner: nil, mayPost: false, why: "anonymous is not bob"),
        Case(acl: "group=staff p", identity: "bob", owner: nil, mayPost: false, why: "groups are unknown to delivery"),
        Case(acl: "owner p", identity: "alice", owner: "alice", mayPost: true, why: "owner entry"),
        Case(acl: "owner p", identity: "bob", owner: "alice", mayPost: false, why: "not the owner"),
        Case(acl: "owner p", identity: nil, owner: nil, mayPost: false, why: "anonymous is never the owner"),
        Case(acl: "", identity: "alice", owner: "alice", mayPost: true, why: "the owner always may post"),
        Case(acl: "-anyone p", identity: "alice", owner: "alice", mayPost: true, why: "even against a negative right"),
        Case(acl: "anyone lrp\n-anyone p", identity: nil, owner: nil, mayPost: false, why: "negative anyone p wins"),
        Case(acl: "anyone lrp\n-anyone p", identity: "bob", owner: nil, mayPost: false, why: "negative anyone p wins for bob"),
        Case(acl: "-anyone p\nanyone lrp", identity: nil, owner: nil, mayPost: false, why: "negative wins whatever the order"),
        Case(acl: "anyone lrp\n-user=eve p", identity: "eve", owner: nil, mayPost: false, why: "eve is excluded"),
        Case(acl: "anyone lrp\n-user=eve p", identity: "bob", owner: nil, mayPost: true, why: "bob is not eve"),
        Case(acl: "anyone lrp\n-authenticated p", identity: nil, owner: nil, mayPost: true, why: "anonymous is not authenticated"),
        Case(acl: "anyone lrp\n-authenticated p", identity: "bob", owner: nil, mayPost: false, why: "bob is authenticated"),
        Case(acl: "user=bob lr\nauthenticated p", identity: "bob", owner: nil, mayPost: true, why: "rights add up"),
    ]

    func testMayPostTable() {
        for c in Self.cases {
            XCTAssertEqual(ACL.parse(c.acl).mayPost(c.identity, owner: c.owner), c.mayPost,
                           "\(c.why): acl \(c.acl.debugDescription), identity \(c.identity ?? "anonymous"), owner \(c.owner ?? "-")")
        }
    }

    func testRights() {
        let acl = ACL.parse("anyone lr\nuser=bob lrwp\n-user=bob w\nauthenticated s")
        XCTAssertEqual(acl.rights(for: nil, owner: nil), ["l", "r"])
        XCTAssertEqual(acl.rights(for: "bob", owner: nil), ["l", "r", "p", "s"])
        XCTAssertEqual(acl.rights(for: "eve", owner: nil), ["l", "r", "s"])
    }

    func testReadFromFolder() throws {
        XCTAssertEqual(try ACL.read(folder: dir), ACL(), "no file: empty ACL")
        TestFS.write("\(dir)/dovecot-acl", "anyone p\n")
        XCTAssertTrue(try ACL.read(folder: dir).mayPost(nil, owner: nil))
    }
}
