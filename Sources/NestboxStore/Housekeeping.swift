// Store housekeeping: what a mail root accumulates by itself and nobody else removes.
//
// - expired duplicate records (DuplicateDB.prune, `duplicatesuppression_expire`): lookups ignore
//   them already, removing them only keeps the directory small;
// - spool files of deliveries that died (MailStore.cleanSpool): older than 36 hours by ctime;
// - trees of mailbox creations that died (MailStore.cleanCreations): older than 36 hours;
// - lock files of nestbox-lmtpd processes that are gone (MailStore.cleanLocks): those naming a
//   process of this host that no longer exists; another host's when older than 36 hours by
//   ctime (a live one's ctime moves at every lock).
// Each part is safe to run at any time beside live deliveries (their ages are far beyond any
// live delivery or creation), and a failure in one does not stop the others. nestbox-lmtpd runs
// it daily; nestbox-purge runs it too.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct HousekeepingResult: Equatable, Sendable {
    public var duplicateRecords = 0
    public var spoolFiles = 0
    public var creationTrees = 0
    public var lockFiles = 0
    public init() {}
}

extension MailStore {
    /// Runs every housekeeping task once, pruning the mail root's duplicate database with the
    /// configured expiry (whether suppression is on or not: records left from when it was on
    /// expire too). For tools; nestbox-lmtpd passes the database it delivers with.
    @discardableResult
    public func housekeeping(age: Double = 36 * 3600) -> HousekeepingResult {
        housekeeping(duplicates: DuplicateDB(directory: duplicatesDirectory, expiry: config.duplicateExpire), age: age)
    }

    /// Runs every housekeeping task once and logs what it removed. `duplicates` is the duplicate
    /// database to prune (nil: suppression off, nothing to prune); `age` the age beyond which
    /// spool files and creation trees are taken as left by a dead process.
    @discardableResult
    public func housekeeping(duplicates: DuplicateDB?, age: Double = 36 * 3600) -> HousekeepingResult {
        var result = HousekeepingResult()
        // Each area is cleaned only if it is reached from the mail root without a symbolic
        // link: a link at `.nestbox/spool` must not make old files elsewhere look like ours.
        func reachable(_ dir: String) -> Bool {
            do {
                try Files.checkBeneath(root, dir)
                return true
            } catch {
                Log.warning("housekeeping: \(error); not cleaned")
                return false
            }
        }
        if let duplicates, reachable(duplicates.directory) {
            do {
                result.duplicateRecords = try duplicates.prune(olderThan: duplicates.expiry)
                if result.duplicateRecords > 0 { Log.info("duplicate database: pruned \(result.duplicateRecords) expired records") }
            } catch {
                Log.warning("duplicate database: prune: \(error)")
            }
        }
        if reachable(spoolDirectory) {
            do {
                result.spoolFiles = try cleanSpool(olderThan: age)
                if result.spoolFiles > 0 { Log.info("spool: removed \(result.spoolFiles) files left by interrupted deliveries") }
            } catch {
                Log.warning("spool: cleanup: \(error)")
            }
        }
        if reachable(creationDirectory) { result.creationTrees = cleanCreations(olderThan: age) }
        if result.creationTrees > 0 { Log.info("mailbox creation: removed \(result.creationTrees) trees left by interrupted creations") }
        if reachable(locksDirectory) { result.lockFiles = cleanLocks(olderThan: age) }
        if result.lockFiles > 0 { Log.info("locks: removed \(result.lockFiles) lock files of processes that are gone") }
        return result
    }

    /// Removes the lock files (DotLockHitch.swift) of processes that are gone, judged by what
    /// they hold as any dotlock is (DotLock.holderIsDead): of this host, when that pid does not
    /// exist (a live one's, this process's included, stays however old); of another host (a
    /// shared mail root), when older than `age` by ctime (a live one's ctime moves at every
    /// lock); empty, when older than 2 s (its maker died before writing).
    @discardableResult
    public func cleanLocks(olderThan age: Double = 36 * 3600) -> Int {
        var removed = 0
        let now = wallSeconds()
        for name in (try? Files.list(locksDirectory)) ?? [] {
            let path = "\(locksDirectory)/\(name)"
            guard let st = try? Files.status(path), (st.st_mode & S_IFMT) == S_IFREG,
                  let bytes = try? Files.read(path, limit: 300) else { continue }
            let text = String(decoding: bytes, as: UTF8.self)
            let thisHost = text.hasSuffix(":\(Host.name)")
            let gone = DotLock.holderIsDead(text, modified: st.st_mtim)
                || (!thisHost && !text.isEmpty && now - Double(st.st_ctim.tv_sec) > age)
            if gone && unlink(path) == 0 { removed += 1 }
        }
        return removed
    }
}
