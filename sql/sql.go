// Package sqlfiles embeds the SQL text pgcourier runs: the numbered migrations
// of the pgcourier schema. It holds no logic; internal/schema applies the
// migrations.
//
// Migrations are named NNNN_name.sql, numbered from 0001 without gaps. A
// released migration is never edited: a change to the schema is a new file.
package sqlfiles

import "embed"

// Migrations holds migrations/NNNN_name.sql, one file per schema version.
//
//go:embed migrations/*.sql
var Migrations embed.FS
