#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// Group commit: a leader waits for the deliveries it was told are on their way, and for no
/// longer than `gatherWait` when one never comes.
final class GroupCommitTests: TempDirTestCase {
    private final class Job {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    private func inThread(_ body: @escaping () -> Void) -> pthread_t {
        var thread = pthread_t()
        let box = Unmanaged.passRetained(Job(body)).toOpaque()
        precondition(pthread_create(&thread, nil, { arg in
            Unmanaged<Job>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, box) == 0)
        return thread
    }

    /// A synced file in tmp/, as a delivery leaves it for the commit.
    private func staged(_ folder: Folder, _ base: String) -> (path: String, stem: String) {
        let path = "\(folder.path)/tmp/\(base)"
        TestFS.write(path, "Subject: \(base)\n\nx\n")
        return (path, MaildirName.stem(base: base, size: 14, virtualSize: 17))
    }

    func testLeaderWaitsForADeliveryOnItsWay() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let commits = GroupCommit()
        let a = staged(folder, "1.M1P1Q1.test"), b = staged(folder, "1.M2P1Q2.test")
        commits.expect(folder)
        var uidA: UInt32? = nil
        let thread = inThread {
            usleep(300)  // still checking duplicates and quota when the leader starts
            uidA = try? commits.commit(a.path, as: a.stem, in: folder, label: "alice",
                                       lockPolicy: MaintenanceFixture.lockPolicy, expected: true)
        }
        let uidB = try commits.commit(b.path, as: b.stem, in: folder, label: "alice", lockPolicy: MaintenanceFixture.lockPolicy)
        pthread_join(thread, nil)
        XCTAssertEqual(Set([uidA, uidB].compactMap { $0 }), [1, 2])
        XCTAssertEqual(commits.rounds, 1, "one lock, one list append, one pair of syncs for both")
        XCTAssertEqual(TestFS.list("\(folder.path)/new").count, 2)
    }

    func testADeliveryThatNeverComesHoldsTheLeaderOnlyBriefly() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let commits = GroupCommit()
        let b = staged(folder, "1.M2P1Q2.test")
        commits.expect(folder)  // and then suppressed as a duplicate, say, without unexpect yet
        let start = monotonicSeconds()
        XCTAssertEqual(try commits.commit(b.path, as: b.stem, in: folder, label: "alice", lockPolicy: MaintenanceFixture.lockPolicy), 1)
        let waited = monotonicSeconds() - start
        XCTAssertLessThan(waited, 0.5, "bounded by gatherWait (plus the syncs)")
        commits.unexpect(folder)
        // Withdrawn: the next leader does not wait at all.
        let c = staged(folder, "1.M3P1Q3.test")
        XCTAssertEqual(try commits.commit(c.path, as: c.stem, in: folder, label: "alice", lockPolicy: MaintenanceFixture.lockPolicy), 2)
        XCTAssertEqual(commits.rounds, 2)
    }
}
