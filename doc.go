// Package pgcourier holds the vocabulary shared by every part of pgcourier:
// nodes and their roles, sources, and the sentinel errors that cross package
// boundaries. It depends on the standard library only, so that every other
// package can import it without pulling in a database driver or a transport.
//
// pgcourier reads a field laptop's logical-replication stream, keeps every
// committed change in a durable outbox, and ships it upstream exactly once and
// in order whenever a link appears. See the README and docs/ for the whole
// picture.
package pgcourier
