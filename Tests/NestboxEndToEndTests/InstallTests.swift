import Foundation
import XCTest

/// scripts/install.sh and scripts/deb.sh on the release build (`scripts/test.sh` builds it with
/// the Swift standard library linked statically before running the tests): what they install,
/// that the installed programs run with an empty environment and nothing of the toolchain, that
/// a second install keeps an edited configuration, and what the Debian package holds.
final class InstallTests: XCTestCase {
    /// The release build: $NESTBOX_RELEASE_DIR, else the package's .build/release.
    static let releaseDir: String = {
        if let dir = ProcessInfo.processInfo.environment["NESTBOX_RELEASE_DIR"], !dir.isEmpty { return dir }
        return "\(Harness.packageRoot)/.build/release"
    }()

    /// Every executable product of Package.swift.
    static let programs: [String] = {
        let manifest = Harness.read("\(Harness.packageRoot)/Package.swift")
        let pattern = try! NSRegularExpression(pattern: #"\.executable\(name: "([^"]+)""#)
        let range = NSRange(manifest.startIndex..., in: manifest)
        return pattern.matches(in: manifest, range: range).map { String(manifest[Range($0.range(at: 1), in: manifest)!]) }
    }()

    private func requireReleaseBuild() throws {
        XCTAssertFalse(Self.programs.isEmpty, "no executable products read from Package.swift")
        for p in Self.programs where !FileManager.default.isExecutableFile(atPath: "\(Self.releaseDir)/\(p)") {
            throw LMTPTestError("\(Self.releaseDir)/\(p) is missing: build with `swift build -c release --static-swift-stdlib --disable-local-rpath` (scripts/test.sh does)")
        }
    }

    @discardableResult
    private func install(_ destdir: String, _ extra: [String] = []) throws -> Harness.Result {
        let r = try Harness.run("/bin/sh", ["\(Harness.packageRoot)/scripts/install.sh", "--from", Self.releaseDir, "--destdir", destdir] + extra)
        XCTAssertEqual(r.status, 0, "install.sh: " + r.stdout + r.stderr)
        return r
    }

    /// The dynamic section of an ELF file: its NEEDED libraries and its RUNPATH/RPATH entries.
    private func dynamicSection(_ path: String) throws -> (needed: [String], runpath: [String]) {
        let r = try Harness.run("/usr/bin/readelf", ["-d", path])
        XCTAssertEqual(r.status, 0, r.stderr)
        var needed: [String] = [], runpath: [String] = []
        for line in r.stdout.split(separator: "\n") {
            guard let open = line.firstIndex(of: "["), let close = line.lastIndex(of: "]") else { continue }
            let value = String(line[line.index(after: open)..<close])
            if line.contains("(NEEDED)") { needed.append(value) }
            if line.contains("(RUNPATH)") || line.contains("(RPATH)") { runpath.append(value) }
        }
        return (needed, runpath)
    }

    /// Checks that a program needs no Swift library and no toolchain directory, and that the
    /// dynamic loader resolves every library it needs.
    private func assertRunsWithoutToolchain(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let d = try dynamicSection(path)
        XCTAssertFalse(d.needed.isEmpty, "\(path): no NEEDED entries read", file: file, line: line)
        XCTAssertEqual(d.needed.filter { $0.hasPrefix("libswift") || $0.contains("Foundation") || $0.contains("dispatch") }, [],
                       "\(path) loads Swift libraries at run time", file: file, line: line)
        XCTAssertEqual(d.runpath, [], "\(path) has a RUNPATH/RPATH", file: file, line: line)
        let ldd = try Harness.run("/usr/bin/env", ["-i", "/usr/bin/ldd", path])
        XCTAssertEqual(ldd.status, 0, ldd.stderr, file: file, line: line)
        XCTAssertFalse(ldd.stdout.contains("not found"), ldd.stdout, file: file, line: line)
        XCTAssertFalse(ldd.stdout.contains("swift"), ldd.stdout, file: file, line: line)
    }

    /// Runs `deliver` as Postfix's pipe(8) would, with an empty environment, into a fresh mail
    /// root, and checks that the message is on disk.
    private func assertDelivers(with deliver: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let f = try DeliverFixture("install-deliver", settings: ["autocreate_post": "yes", "autocreate_quota": "0"])
        let r = try Harness.run("/usr/bin/env", ["-i", deliver, "-C", f.configPath, "-r", "s@example.org", "alice"],
                                input: Data(sampleMessage.utf8))
        XCTAssertEqual(r.status, 0, "installed nestbox-deliver: " + r.stdout + r.stderr, file: file, line: line)
        let stored = Harness.files(under: "\(f.root)/alice/new")
        XCTAssertEqual(stored.count, 1, "messages in \(f.root)/alice/new", file: file, line: line)
        if let name = stored.first {
            XCTAssertTrue(Harness.read("\(f.root)/alice/new/\(name)").contains("Subject: hello"), file: file, line: line)
        }
    }

    func testReleaseProgramsLinkTheSwiftLibrariesStatically() throws {
        try requireReleaseBuild()
        for p in Self.programs { try assertRunsWithoutToolchain("\(Self.releaseDir)/\(p)") }
        // Berkeley DB is loaded only when a SASL database is read; libsasl2 only by the program
        // that speaks to it: neither is mapped and relocated at each start of a delivery.
        for p in Self.programs {
            let needed = try dynamicSection("\(Self.releaseDir)/\(p)").needed
            XCTAssertFalse(needed.contains { $0.hasPrefix("libdb") }, "\(p) needs \(needed)")
            XCTAssertEqual(needed.contains { $0.hasPrefix("libsasl2") }, p == "nestbox-passwd", "\(p) needs \(needed)")
        }
    }

    func testInstallIntoDestdirAndRunTheInstalledDeliverWithAnEmptyEnvironment() throws {
        try requireReleaseBuild()
        let dest = try Harness.makeTempDir("install")
        defer { Harness.removeTree(dest) }
        try install(dest, ["--prefix", "/opt/nb"])

        for p in Self.programs {
            let path = "\(dest)/opt/nb/bin/\(p)"
            XCTAssertTrue(FileManager.default.isExecutableFile(atPath: path), "\(path) not installed")
            XCTAssertTrue(FileManager.default.contentsEqual(atPath: path, andPath: "\(Self.releaseDir)/\(p)"), path)
        }
        let pages = try FileManager.default.contentsOfDirectory(atPath: "\(Harness.packageRoot)/man")
        XCTAssertFalse(pages.isEmpty)
        for page in pages {
            let section = (page as NSString).pathExtension
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dest)/opt/nb/share/man/man\(section)/\(page)"), "man page \(page)")
        }
        XCTAssertEqual(Harness.read("\(dest)/etc/nestbox/nestbox.conf"), Harness.read("\(Harness.packageRoot)/conf/nestbox.conf"))
        for sample in ["postfix/master.cf", "postfix/main.cf", "cron/nestbox", "systemd/nestbox-lmtpd.service"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dest)/opt/nb/share/doc/nestbox/\(sample)"), sample)
        }
        // The samples name the programs where this install put them.
        let masterCf = Harness.read("\(dest)/opt/nb/share/doc/nestbox/postfix/master.cf")
        XCTAssertTrue(masterCf.contains("argv=/opt/nb/bin/nestbox-deliver "), masterCf)
        XCTAssertFalse(masterCf.contains("/usr/local/bin/"), masterCf)
        // A staged install creates nothing outside the destdir.
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dest)/var"), "a --destdir install makes no spool")

        // The installed program, copied alone into an empty directory, runs with no PATH, no
        // LD_LIBRARY_PATH, nothing of the toolchain.
        let lone = try Harness.makeTempDir("install-lone")
        defer { Harness.removeTree(lone) }
        try FileManager.default.copyItem(atPath: "\(dest)/opt/nb/bin/nestbox-deliver", toPath: "\(lone)/nestbox-deliver")
        try assertRunsWithoutToolchain("\(lone)/nestbox-deliver")
        try assertDelivers(with: "\(lone)/nestbox-deliver")
    }

    func testSecondInstallKeepsAnEditedConfiguration() throws {
        try requireReleaseBuild()
        let dest = try Harness.makeTempDir("install-twice")
        defer { Harness.removeTree(dest) }
        let conf = "\(dest)/etc/nestbox/nestbox.conf", dist = conf + ".dist"
        let sample = Harness.read("\(Harness.packageRoot)/conf/nestbox.conf")

        try install(dest)
        // Unchanged: a second install leaves it and writes no .dist.
        try install(dest)
        XCTAssertEqual(Harness.read(conf), sample)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dist))

        let edited = sample + "autocreate_post: yes\n"
        try edited.write(toFile: conf, atomically: true, encoding: .utf8)
        let r = try install(dest)
        XCTAssertEqual(Harness.read(conf), edited, "the edited configuration was replaced")
        XCTAssertEqual(Harness.read(dist), sample, "the new sample goes beside it")
        XCTAssertTrue(r.stdout.contains("kept \(conf)"), r.stdout)
        try install(dest)
        XCTAssertEqual(Harness.read(conf), edited)
    }

    func testDebianPackage() throws {
        try requireReleaseBuild()
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/dpkg-shlibdeps") else {
            XCTFail("dpkg-shlibdeps is missing (Debian package dpkg-dev)")
            return
        }
        let out = try Harness.makeTempDir("deb")
        defer { Harness.removeTree(out) }
        let r = try Harness.run("/bin/sh", ["\(Harness.packageRoot)/scripts/deb.sh", "--from", Self.releaseDir, "--out", out])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let deb = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(deb.hasPrefix("\(out)/nestbox_") && deb.hasSuffix(".deb"), deb)

        let field = { (name: String) throws -> String in
            let f = try Harness.run("/usr/bin/dpkg-deb", ["-f", deb, name])
            XCTAssertEqual(f.status, 0, f.stderr)
            return f.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        XCTAssertEqual(try field("Package"), "nestbox")
        let version = try Harness.run("\(Self.releaseDir)/nestbox-deliver", ["--version"]).stdout
        XCTAssertTrue(version.hasPrefix("nestbox-deliver \(try field("Version"))"), version)
        let arch = try Harness.run("/usr/bin/dpkg", ["--print-architecture"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(try field("Architecture"), arch)
        XCTAssertTrue(deb.hasSuffix("_\(arch).deb"), deb)
        let depends = try field("Depends").split(separator: ",").map {
            String($0.trimmingCharacters(in: .whitespaces).split(separator: " ")[0])
        }
        for lib in ["libc6", "libsasl2-2", "libdb5.3", "passwd"] { XCTAssertTrue(depends.contains(lib), "Depends: \(depends)") }
        XCTAssertFalse(depends.contains { $0.contains("swift") }, "Depends: \(depends)")

        let info = try Harness.run("/usr/bin/dpkg-deb", ["-I", deb])
        XCTAssertTrue(info.stdout.contains("conffiles") && info.stdout.contains("postinst"), info.stdout)
        let tmp = try Harness.makeTempDir("deb-control")
        defer { Harness.removeTree(tmp) }
        XCTAssertEqual(try Harness.run("/usr/bin/dpkg-deb", ["-e", deb, "\(tmp)/DEBIAN"]).status, 0)
        XCTAssertEqual(Harness.read("\(tmp)/DEBIAN/conffiles"), "/etc/nestbox/nestbox.conf\n")
        let postinst = Harness.read("\(tmp)/DEBIAN/postinst")
        XCTAssertTrue(postinst.contains("useradd --system") && postinst.contains("getent passwd vmail"), postinst)
        XCTAssertEqual(try Harness.run("/bin/sh", ["-n", "\(tmp)/DEBIAN/postinst"]).status, 0, "postinst is not valid sh")

        let contents = try Harness.run("/usr/bin/dpkg-deb", ["-c", deb]).stdout
        for p in Self.programs { XCTAssertTrue(contents.contains(" ./usr/bin/\(p)\n"), "\(p) not in the package") }
        XCTAssertTrue(contents.contains(" ./etc/nestbox/nestbox.conf\n"), contents)
        XCTAssertTrue(contents.contains(" ./usr/share/man/man8/nestbox-deliver.8\n"), contents)
        XCTAssertTrue(contents.contains(" ./usr/share/man/man5/nestbox.conf.5\n"), contents)
        XCTAssertTrue(contents.contains("root/root"), "files owned by root")
        XCTAssertFalse(contents.contains("/usr/local"), contents)

        try assertPostinstMakesTheMailOwnerAndSpool(postinst: "\(tmp)/DEBIAN/postinst")

        // The unpacked program runs on its own and delivers.
        let root = try Harness.makeTempDir("deb-root")
        defer { Harness.removeTree(root) }
        XCTAssertEqual(try Harness.run("/usr/bin/dpkg-deb", ["-x", deb, root]).status, 0)
        XCTAssertTrue(Harness.read("\(root)/usr/share/doc/nestbox/postfix/master.cf").contains("argv=/usr/bin/nestbox-deliver "))
        try assertRunsWithoutToolchain("\(root)/usr/bin/nestbox-deliver")
        try assertDelivers(with: "\(root)/usr/bin/nestbox-deliver")
    }

    /// The package's postinst, run as dpkg runs it (`configure`), in a private mount namespace
    /// whose /etc is a copy of this machine's without the mail owner (once without the user and
    /// its group, once with the group left): it creates a system account vmail without login and
    /// the spool `partition-default` names, owned by vmail, mode 0700; a second run changes
    /// nothing and succeeds. This machine's own /etc is untouched.
    func assertPostinstMakesTheMailOwnerAndSpool(postinst: String) throws {
        let before = Harness.read("/etc/passwd")
        for keepGroup in [false, true] {
            let tmp = try Harness.makeTempDir("postinst")
            defer { Harness.removeTree(tmp) }
            XCTAssertEqual(try Harness.run("/bin/cp", ["-a", "/etc", "\(tmp)/etc"]).status, 0)
            for file in ["passwd", "shadow"] + (keepGroup ? [] : ["group", "gshadow"]) {
                let path = "\(tmp)/etc/\(file)"
                guard FileManager.default.fileExists(atPath: path) else { continue }
                let kept = Harness.read(path).split(separator: "\n").filter { !$0.hasPrefix("vmail:") }.joined(separator: "\n") + "\n"
                try kept.write(toFile: path, atomically: false, encoding: .utf8)
            }
            try FileManager.default.createDirectory(atPath: "\(tmp)/etc/nestbox", withIntermediateDirectories: true)
            let spool = "\(tmp)/spool/mail"
            try FileManager.default.createDirectory(atPath: "\(tmp)/spool", withIntermediateDirectories: true)
            try "partition-default: \(spool)\n".write(toFile: "\(tmp)/etc/nestbox/nestbox.conf", atomically: false, encoding: .utf8)
            let script = """
                set -e
                mount --bind \(tmp)/etc /etc
                ! getent passwd vmail >/dev/null
                sh \(postinst) configure
                sh \(postinst) configure
                getent passwd vmail
                getent group vmail
                stat -c '%U %G %a' \(spool)
                """
            let r = try Harness.run("/usr/bin/unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", script])
            XCTAssertEqual(r.status, 0, "keep group \(keepGroup): " + r.stdout + r.stderr)
            let lines = r.stdout.split(separator: "\n").map(String.init)
            XCTAssertEqual(lines.count, 3, r.stdout + r.stderr)
            guard lines.count == 3 else { continue }
            let account = lines[0].split(separator: ":", omittingEmptySubsequences: false)
            XCTAssertEqual(account.first, "vmail")
            XCTAssertEqual(account.last, "/usr/sbin/nologin")
            XCTAssertLessThan(Int(account[2]) ?? 65534, 1000, "a system account: \(lines[0])")
            XCTAssertTrue(lines[1].hasPrefix("vmail:"), lines[1])
            XCTAssertEqual(account[3], lines[1].split(separator: ":", omittingEmptySubsequences: false)[2], "vmail's group")
            XCTAssertEqual(lines[2], "vmail vmail 700")
        }
        XCTAssertEqual(Harness.read("/etc/passwd"), before, "this machine's accounts are untouched")
    }
}
