#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// A user's Maildir++ root for the maintenance tests (uidlist sessions, scans, expunge): the
/// INBOX folder, messages written with correct `,S=`/`,W=` names and numbered by the store.
enum MaintenanceFixture {
    static let lockPolicy = DotLock.Options(timeout: 5, staleAfter: 120)

    static func inbox(_ dir: String) throws -> Folder {
        let root = "\(dir)/alice"
        let folder = Folder(path: root, mailRoot: root, name: "INBOX")
        try folder.create()
        return folder
    }

    /// Writes a message into `sub` with a correct name and (for cur/) `flags`; returns its stem.
    @discardableResult
    static func put(_ folder: Folder, _ body: String, base: String, sub: String = "new", flags: String? = nil) -> String {
        let bytes = Array(body.utf8)
        let lfs = bytes.filter { $0 == 10 }.count
        let stem = MaildirName.stem(base: base, size: Int64(bytes.count), virtualSize: Int64(bytes.count + lfs))
        let name = flags.map { "\(stem):2,\($0)" } ?? stem
        TestFS.write("\(folder.path)/\(sub)/\(name)", bytes)
        return stem
    }

    static func message(_ i: Int) -> String { "Subject: message \(i)\n\nbody \(i)\nline two\n" }
}
