package pgtest

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// clusterPrefix starts the name of every cluster directory.
const clusterPrefix = "pgcourier-pgtest-"

// inUseFile is the file in a cluster directory that the owning process holds
// a flock on. The kernel releases the lock when that process dies, however
// it dies, so a directory whose lock can be taken is left over.
const inUseFile = "pgtest.lock"

// lockInUse creates dir's lock file and locks it for the life of the
// cluster. The descriptor is close-on-exec, so the server does not inherit
// the lock and keep a directory alive after its test binary died.
func lockInUse(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, inUseFile), os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// sweepOnce removes, once per process, the cluster directories of test
// binaries that died without closing their clusters, such as one stopped by
// go test's -timeout. Their servers died with them (parent-death signal).
var sweepOnce = sync.OnceFunc(func() { sweep(os.TempDir(), time.Minute) })

// sweep removes the left-over cluster directories under root that are older
// than minAge.
func sweep(root string, minAge time.Duration) {
	dirs, err := filepath.Glob(filepath.Join(root, clusterPrefix+"*"))
	if err != nil {
		return
	}
	for _, dir := range dirs {
		// Young directories may be between MkdirTemp and lockInUse.
		if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < minAge {
			continue
		}
		f, err := os.Open(filepath.Join(dir, inUseFile))
		if err != nil {
			continue // not a cluster directory, or not ours to open
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			removeSharedMemory(filepath.Join(dir, "data"))
			os.RemoveAll(dir)
		}
		f.Close()
	}
}
