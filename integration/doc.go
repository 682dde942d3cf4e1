// Package integration holds end-to-end tests across roles: the real
// pgcourier binary, built from cmd/pgcourier, runs as field laptops (role
// client) and a community server (role server), each on its own throw-away
// Postgres cluster (internal/pgtest). The tests write edc-like data on the
// laptops, with one import per laptop too large for one batch (captured in
// parts, applied whole), while they take the server offline, kill processes
// with SIGKILL, crash and restart the databases and switch routes, then
// check the server against the laptops row by row, and that no batch took
// effect twice.
//
// The package has no code outside its tests. Run it with
//
//	TMPDIR=/dev/shm go test -race -count=1 ./integration/
//
// It is skipped under -short.
package integration
