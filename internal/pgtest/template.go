package pgtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const defaultBinDir = "/usr/lib/postgresql/15/bin"

// confInclude is the file, next to postgresql.conf, that holds a cluster's
// own settings. The template's postgresql.conf includes it last, so its
// settings win over initdb's; ALTER SYSTEM still wins over both.
const confInclude = "pgtest.conf"

// templateLayout changes whenever the way templates are built changes, so
// that caches built by older code are not used.
const templateLayout = "pgtest template 1"

// builds counts the templates this process built, by directory, for tests.
var builds = struct {
	sync.Mutex
	n map[string]int
}{n: map[string]int{}}

func templateBuilds(dir string) int {
	builds.Lock()
	defer builds.Unlock()
	return builds.n[dir]
}

// BinDir returns the directory holding the PostgreSQL server binaries
// (initdb, postgres, and tools such as pg_recvlogical and pgbench): the value
// of PGCOURIER_TEST_PGBIN if set, else /usr/lib/postgresql/15/bin if it holds
// initdb, else the output of `pg_config --bindir`, else the directory of
// initdb on the PATH.
func BinDir() (string, error) {
	if dir := os.Getenv(envBinDir); dir != "" {
		if !hasServer(dir) {
			return "", fmt.Errorf("pgtest: %s=%s: no initdb and postgres there", envBinDir, dir)
		}
		return filepath.Abs(dir)
	}
	if hasServer(defaultBinDir) {
		return defaultBinDir, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasServer(dir) {
			return filepath.Abs(dir)
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && hasServer(filepath.Dir(p)) {
		return filepath.Abs(filepath.Dir(p))
	}
	return "", fmt.Errorf("pgtest: no PostgreSQL server binaries found: install PostgreSQL 15 or set %s to the directory holding initdb and postgres", envBinDir)
}

func hasServer(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// versions caches `postgres --version` by binary directory.
var versions sync.Map

func serverVersion(bin string) (string, error) {
	if v, ok := versions.Load(bin); ok {
		return v.(string), nil
	}
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("pgtest: postgres --version: %w", err)
	}
	v := strings.TrimSpace(string(out))
	versions.Store(bin, v)
	return v, nil
}

// account is the unprivileged account the server runs as when the test
// binary runs as root. A nil *account means: run as the current user.
type account struct {
	uid, gid int
}

// serverAccount returns the postgres account when running as root, nil
// otherwise.
var serverAccount = sync.OnceValues(func() (*account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root needs the unprivileged postgres account to run the server: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("pgtest: postgres account: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("pgtest: postgres account: gid %q: %w", u.Gid, err)
	}
	return &account{uid: uid, gid: gid}, nil
})

// credential returns the credential to start server processes with, nil
// for the current user.
func (a *account) credential() *syscall.Credential {
	if a == nil {
		return nil
	}
	// Groups is empty: the server gets no supplementary groups.
	return &syscall.Credential{Uid: uint32(a.uid), Gid: uint32(a.gid)}
}

// chown gives path to the account; it does nothing for the current user.
func (a *account) chown(path string) error {
	if a == nil {
		return nil
	}
	return os.Lchown(path, a.uid, a.gid)
}

// serverUID is the uid the server runs as.
func (a *account) serverUID() int {
	if a == nil {
		return os.Geteuid()
	}
	return a.uid
}

// initdbArgs are initdb's arguments after -D dir, with the locale last.
var initdbArgs = []string{"-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"}

// locales are tried in order: C.UTF-8 is missing on some systems.
var locales = []string{"C.UTF-8", "C"}

// templateDir returns where the template for these binaries and this
// server account lives under root. The name hashes everything the template
// depends on, so a new PostgreSQL version or a different account gets a
// template of its own.
func templateDir(root, bin, version string, acct *account) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nbin=%s\nversion=%s\nuid=%d\ninitdb=%s\nlocales=%s\ninclude=%s\n",
		templateLayout, bin, version, acct.serverUID(),
		strings.Join(initdbArgs, " "), strings.Join(locales, " "), confInclude)
	return filepath.Join(root, "pgcourier-pgtemplate-"+hex.EncodeToString(h.Sum(nil))[:16])
}

// ensureTemplate returns the data directory of an initdb template under
// root, building it first if no earlier run (of this or another test binary)
// has. Builds are serialized by a lock file; a template is built in a
// temporary directory and renamed into place when complete, so a template
// that exists is whole.
func ensureTemplate(ctx context.Context, root, bin string, acct *account) (string, error) {
	version, err := serverVersion(bin)
	if err != nil {
		return "", err
	}
	dir := templateDir(root, bin, version, acct)
	data := filepath.Join(dir, "data")
	if templateOK(data) {
		return data, nil
	}

	unlock, err := lockFile(ctx, dir+".lock")
	if err != nil {
		return "", fmt.Errorf("pgtest: lock template: %w", err)
	}
	defer unlock()
	if templateOK(data) {
		return data, nil // built while we waited for the lock
	}
	// Whatever is there is incomplete, e.g. partly removed by a tmp cleaner.
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("pgtest: remove broken template: %w", err)
	}

	build, err := os.MkdirTemp(root, filepath.Base(dir)+".build-")
	if err != nil {
		return "", fmt.Errorf("pgtest: build template: %w", err)
	}
	defer os.RemoveAll(build) // nothing left there after the rename
	if err := acct.chown(build); err != nil {
		return "", fmt.Errorf("pgtest: build template: %w", err)
	}
	buildData := filepath.Join(build, "data")
	if err := runInitdb(ctx, bin, buildData, acct); err != nil {
		return "", fmt.Errorf("pgtest: build template: %w", err)
	}
	if err := appendInclude(filepath.Join(buildData, "postgresql.conf")); err != nil {
		return "", fmt.Errorf("pgtest: build template: %w", err)
	}
	if err := os.Rename(build, dir); err != nil {
		return "", fmt.Errorf("pgtest: build template: %w", err)
	}
	builds.Lock()
	builds.n[dir]++
	builds.Unlock()
	return data, nil
}

// templateOK reports whether data looks like a complete template.
func templateOK(data string) bool {
	for _, name := range []string{"PG_VERSION", "global/pg_control", "postgresql.conf", "base"} {
		if _, err := os.Stat(filepath.Join(data, name)); err != nil {
			return false
		}
	}
	return true
}

// runInitdb creates a cluster in dir, trying each locale in turn.
func runInitdb(ctx context.Context, bin, dir string, acct *account) error {
	var errs []error
	for _, locale := range locales {
		args := append([]string{"-D", dir}, initdbArgs...)
		args = append(args, "--locale="+locale)
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), args...)
		cmd.Dir = filepath.Dir(dir)
		cmd.Env = childEnv()
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: acct.credential(), Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("initdb --locale=%s: %s: %w", locale, bytes.TrimSpace(out), err))
		if ctx.Err() != nil {
			break
		}
		// initdb removes what it created when it fails; make sure.
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
			break
		}
	}
	return errors.Join(errs...)
}

// appendInclude makes postgresql.conf include the cluster's own settings
// file after everything else.
func appendInclude(conf string) error {
	f, err := os.OpenFile(conf, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "\n# Each pgtest cluster's own settings.\ninclude '%s'\n", confInclude)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// lockFile takes an exclusive flock on path, creating it if needed, and
// returns its release. The file stays: removing it would let two processes
// hold locks on different files of the same name.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	// Readable by all, so that other users whose server runs as the same
	// account (root and postgres itself) can share the lock.
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// copyTree copies the directory src to dst, which must not exist, keeping
// permission bits and symbolic links, and gives every copy to acct.
func copyTree(src, dst string, acct *account) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
			if err := os.Chmod(target, mode.Perm()); err != nil {
				return err
			}
		case mode.IsRegular():
			if err := copyFile(path, target, mode.Perm()); err != nil {
				return err
			}
		case mode&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("copy %s: not a file, directory or symbolic link", path)
		}
		return acct.chown(target)
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, perm) // the umask may have trimmed it
}
