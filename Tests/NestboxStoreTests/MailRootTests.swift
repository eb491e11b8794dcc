#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// A small mail root with users, shared areas and domains, and what is not a mailbox beside them.
enum MailRootFixture {
    static func maildir(_ path: String) {
        for sub in ["cur", "new", "tmp"] { TestFS.mkdirs("\(path)/\(sub)") }
    }

    /// alice (Lists, Lists/Work, Ärger), bob, public (News, News/Today), and with domains
    /// carol@example.org and example.org's public (Notices); plus things that are no mailbox.
    static func make(_ root: String) {
        maildir("\(root)/alice")
        maildir("\(root)/alice/.Lists")
        maildir("\(root)/alice/.Lists.Work")
        maildir("\(root)/alice/.&AMQ-rger")
        TestFS.mkdirs("\(root)/alice/.Half/new")  // no cur/: not a folder (counted by quota)
        TestFS.write("\(root)/alice/.stray", "x")
        maildir("\(root)/bob")
        maildir("\(root)/public")
        maildir("\(root)/public/.News")
        maildir("\(root)/public/.News.Today")
        maildir("\(root)/domain/example.org/carol")
        maildir("\(root)/domain/example.org/carol/.Sent")
        maildir("\(root)/domain/example.org/public/.Notices")
        TestFS.mkdirs("\(root)/.nestbox/spool")
        maildir("\(root)/.hidden")
        TestFS.mkdirs("\(root)/notamaildir")
        symlink("\(root)/alice", "\(root)/linked")
        TestFS.write("\(root)/stray", "x")
    }
}

final class MailRootTests: TempDirTestCase {
    func testUsersWithoutVirtualDomains() throws {
        MailRootFixture.make(dir)
        let root = MailRoot(path: dir, virtDomains: .off)
        XCTAssertEqual(try root.users().map(\.address), ["alice", "bob"])
        XCTAssertEqual(try root.users().map(\.root), ["\(dir)/alice", "\(dir)/bob"])
        XCTAssertEqual(try root.sharedAreas().map(\.root), ["\(dir)/public"])
    }

    func testUsersWithVirtualDomains() throws {
        MailRootFixture.make(dir)
        let root = MailRoot(path: dir, virtDomains: .userid)
        XCTAssertEqual(try root.users().map(\.address), ["alice", "bob", "carol@example.org"])
        XCTAssertEqual(try root.users().last?.root, "\(dir)/domain/example.org/carol")
        XCTAssertEqual(try root.sharedAreas().map(\.address), ["public", "public@example.org"])
        XCTAssertTrue(try root.sharedAreas().allSatisfy(\.isShared))
    }

    func testFoldersDecodedAndOnlyWithCur() throws {
        MailRootFixture.make(dir)
        let root = MailRoot(path: dir)
        let alice = try XCTUnwrap(try root.users().first)
        let folders = try root.folders(of: alice)
        XCTAssertEqual(folders.map(\.name), ["INBOX", "Lists", "Lists/Work", "Ärger"])
        XCTAssertEqual(folders.map(\.path), ["\(dir)/alice", "\(dir)/alice/.Lists", "\(dir)/alice/.Lists.Work", "\(dir)/alice/.&AMQ-rger"])
        XCTAssertTrue(folders.allSatisfy { $0.mailRoot == "\(dir)/alice" && $0.partition == dir })
        let dotted = MailRoot(path: dir, separator: ".")
        XCTAssertEqual(try dotted.folders(of: alice).map(\.name), ["INBOX", "Lists", "Lists.Work", "Ärger"])
        // A shared area without an INBOX of its own still has its folders.
        let shared = try XCTUnwrap(try MailRoot(path: dir, virtDomains: .userid).sharedAreas().last)
        XCTAssertEqual(try root.folders(of: shared).map(\.name), ["Notices"])
    }

    func testFolderDirectoriesAsQuotaCountsThem() throws {
        MailRootFixture.make(dir)
        let all = try MailRoot.folderDirectories("\(dir)/alice", requireCur: false).map(Files.baseName).sorted()
        XCTAssertEqual(all, [".&AMQ-rger", ".Half", ".Lists", ".Lists.Work"])
        let withCur = try MailRoot.folderDirectories("\(dir)/alice", requireCur: true).map(Files.baseName).sorted()
        XCTAssertEqual(withCur, [".&AMQ-rger", ".Lists", ".Lists.Work"])
    }
}
