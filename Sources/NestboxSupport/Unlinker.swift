// Unlinking in a second thread while the caller goes on choosing. A purge of a large folder
// spends most of its time in the kernel's unlink (the directory entry and the inode freed in the
// journal), and the rest reading the directory and deciding: done one after the other they add
// up, done side by side the purge takes about as long as the unlinks alone.
//
// Files are named relative to a directory descriptor the caller keeps open until `finish`
// (unlinkat: no path walk per file, and nothing is reached through a link the caller did not
// open). `finish` waits for them all. At most `ahead` unlinks wait at a time: the caller is held
// back to the kernel's pace, so work it does per file (such as keeping a lock alive) spans the
// whole removal, and memory stays bounded.
//
// With `threads` above one the files are dealt out in turn to that many threads. The kernel holds
// the directory's lock only while it takes the name out; freeing the inode and its blocks (and,
// on a disk mounted with `discard`, waiting for the device to drop them) comes after, and those
// waits then overlap. The order of the unlinks is no longer the order asked: callers that need
// one file gone before another must not use more than one thread.

import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public final class Unlinker {
    /// An unlink that failed: the tag given with it and errno.
    public struct Failure: Equatable, Sendable {
        public var tag: Int
        public var code: Int32
    }

    /// One serial queue per thread, each with the failures it saw (touched only on that queue,
    /// and by `finish` once the queue has drained).
    private final class Lane {
        let queue: DispatchQueue
        var failures: [Failure] = []
        init(_ index: Int) { queue = DispatchQueue(label: "nestbox.unlink.\(index)") }
    }

    private let lanes: [Lane]
    private var next = 0
    private let room: DispatchSemaphore

    public init(ahead: Int = 1024, threads: Int = 1) {
        room = DispatchSemaphore(value: max(1, ahead))
        lanes = (0..<max(1, threads)).map(Lane.init)
    }

    /// Unlinks `name` in the directory `directory` (a descriptor valid until `finish`).
    /// Called from one thread at a time.
    public func unlink(in directory: Int32, _ name: String, tag: Int) {
        room.wait()
        let lane = lanes[next]
        next = next + 1 == lanes.count ? 0 : next + 1
        lane.queue.async { [room] in
            if unlinkat(directory, name, 0) != 0 { lane.failures.append(Failure(tag: tag, code: errno)) }
            room.signal()
        }
    }

    /// Waits for every unlink asked for; returns those that failed, by tag.
    public func finish() -> [Failure] {
        lanes.flatMap { lane in lane.queue.sync { lane.failures } }.sorted { $0.tag < $1.tag }
    }
}
