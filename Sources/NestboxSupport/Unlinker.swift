// Unlinking in a second thread while the caller goes on choosing. A purge of a large folder
// spends most of its time in the kernel's unlink (the directory entry and the inode freed in the
// journal), and the rest reading the directory and deciding: done one after the other they add
// up, done side by side the purge takes about as long as the unlinks alone.
//
// Files are named relative to a directory descriptor the caller keeps open until `finish`
// (unlinkat: no path walk per file, and nothing is reached through a link the caller did not
// open). Unlinks run in the order they were asked for; `finish` waits for them all. At most
// `ahead` unlinks wait at a time: the caller is held back to the kernel's pace, so work it does
// per file (such as keeping a lock alive) spans the whole removal, and memory stays bounded.

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

    private let queue = DispatchQueue(label: "nestbox.unlink")
    /// Touched only on `queue` (and by `finish` after the queue has drained).
    private var failures: [Failure] = []

    private let room: DispatchSemaphore

    public init(ahead: Int = 1024) {
        room = DispatchSemaphore(value: max(1, ahead))
    }

    /// Unlinks `name` in the directory `directory` (a descriptor valid until `finish`).
    public func unlink(in directory: Int32, _ name: String, tag: Int) {
        room.wait()
        queue.async { [self] in
            if unlinkat(directory, name, 0) != 0 { failures.append(Failure(tag: tag, code: errno)) }
            room.signal()
        }
    }

    /// Waits for every unlink asked for; returns those that failed, in the order asked.
    public func finish() -> [Failure] {
        queue.sync { failures }
    }
}
