package pgcourier

import (
	"fmt"
	"path"
	"strings"
)

// TableFilter selects the tables a node captures: those matching any Include
// pattern and no Exclude pattern. A pattern is "schema.table" where each part
// may use the wildcards of path.Match ('*', '?', '[…]'), such as "public.*".
// Tables of the pgcourier schema and of Postgres's system schemas never match.
type TableFilter struct {
	Include []string
	Exclude []string
}

// CheckTablePattern returns an error if p is not a valid "schema.table"
// pattern.
func CheckTablePattern(p string) error {
	schema, table, ok := strings.Cut(p, ".")
	if !ok || schema == "" || table == "" || strings.Contains(table, ".") {
		return fmt.Errorf("table pattern %q: want schema.table, such as public.*", p)
	}
	for _, part := range []string{schema, table} {
		if _, err := path.Match(part, ""); err != nil {
			return fmt.Errorf("table pattern %q: %w", p, err)
		}
	}
	return nil
}

// Match reports whether the table schema.table is selected.
func (f TableFilter) Match(schema, table string) bool {
	switch schema {
	case "pgcourier", "pg_catalog", "information_schema", "pg_toast":
		return false
	}
	return matchAny(f.Include, schema, table) && !matchAny(f.Exclude, schema, table)
}

func matchAny(patterns []string, schema, table string) bool {
	for _, p := range patterns {
		ps, pt, ok := strings.Cut(p, ".")
		if !ok {
			continue
		}
		if ms, _ := path.Match(ps, schema); !ms {
			continue
		}
		if mt, _ := path.Match(pt, table); mt {
			return true
		}
	}
	return false
}
