package apply

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// table is an upstream table as the catalog describes it when a batch
// starts. Columns are matched to incoming ones by name.
type table struct {
	Schema  string
	Name    string
	OID     uint32
	Columns []tableColumn
	Indexes []tableIndex
	Links   tableLinks

	ident       string         // schema.name quoted for SQL
	byName      map[string]int // column name → index in Columns
	fingerprint string         // changes whenever anything above does
}

type tableColumn struct {
	Name      string `json:"name"`
	Type      string `json:"type"`   // schema-qualified type name without modifier, quoted for SQL: what values are cast to
	Format    string `json:"format"` // format_type, for messages and hints
	Generated bool   `json:"generated"`
	Identity  string `json:"identity"` // "a" (GENERATED ALWAYS), "d" (BY DEFAULT) or ""
	NotNull   bool   `json:"notnull"`
}

// tableLinks are the foreign keys that tie a table to others.
type tableLinks struct {
	// Parents are the tables this one references through a foreign key
	// checked row by row (not deferrable): their rows must exist first.
	Parents []uint32 `json:"parents"`
	// Referenced: some foreign key references this table, so deleting or
	// re-keying its rows can cascade or be refused.
	Referenced bool `json:"referenced"`
	// Cascades: a foreign key referencing this table acts on update or
	// delete (CASCADE, SET NULL, SET DEFAULT): changing its rows changes
	// rows of other tables.
	Cascades bool `json:"cascades"`
	// Triggers: the table has triggers of its own (not those behind
	// constraints), which may read or write other tables.
	Triggers bool `json:"triggers"`
}

// tableIndex is a unique index or an exclusion constraint.
type tableIndex struct {
	Columns    []string `json:"columns"`
	Expression bool     `json:"expression"`
	Partial    bool     `json:"partial"`
	Primary    bool     `json:"primary"`
	ReplIdent  bool     `json:"replident"`
	Unique     bool     `json:"unique"`
	Exclusion  bool     `json:"exclusion"`
	Deferrable bool     `json:"deferrable"`
}

// catalogSQL describes the tables named by two parallel arrays (schemas and
// names), one row per name in order; the oid is NULL for a table that does
// not exist (or is not an ordinary or partitioned table).
const catalogSQL = `
SELECT q.i::int, c.oid,
  coalesce((
    SELECT json_agg(json_build_object(
             'name', a.attname,
             'type', pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(ty.typname),
             'format', pg_catalog.format_type(a.atttypid, a.atttypmod),
             'generated', a.attgenerated <> '',
             'identity', a.attidentity::text,
             'notnull', a.attnotnull) ORDER BY a.attnum)
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
      JOIN pg_catalog.pg_namespace tn ON tn.oid = ty.typnamespace
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]')::text,
  coalesce((
    SELECT json_agg(json_build_object(
             'columns', (SELECT array_agg(a.attname ORDER BY k.ord)
                           FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum),
             'expression', i.indexprs IS NOT NULL OR 0 = ANY (i.indkey::int2[]),
             'partial', i.indpred IS NOT NULL,
             'primary', i.indisprimary,
             'replident', i.indisreplident,
             'unique', i.indisunique,
             'exclusion', i.indisexclusion,
             'deferrable', coalesce(con.condeferrable, false)) ORDER BY i.indexrelid)
      FROM pg_catalog.pg_index i
      LEFT JOIN pg_catalog.pg_constraint con
        ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x')
     WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion) AND i.indisvalid), '[]')::text,
  json_build_object(
    'parents', coalesce((SELECT json_agg(DISTINCT f.confrelid::int8) FROM pg_catalog.pg_constraint f
                          WHERE f.conrelid = c.oid AND f.contype = 'f' AND NOT f.condeferrable AND f.confrelid <> c.oid), '[]'),
    'referenced', EXISTS (SELECT FROM pg_catalog.pg_constraint f WHERE f.confrelid = c.oid AND f.contype = 'f'),
    'cascades', EXISTS (SELECT FROM pg_catalog.pg_constraint f WHERE f.confrelid = c.oid AND f.contype = 'f'
                          AND (f.confupdtype IN ('c', 'n', 'd') OR f.confdeltype IN ('c', 'n', 'd'))),
    'triggers', EXISTS (SELECT FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal))::text
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(s, n, i)
LEFT JOIN pg_catalog.pg_namespace ns ON ns.nspname = q.s
LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = q.n AND c.relkind IN ('r', 'p')
ORDER BY q.i`

type tableName struct{ schema, name string }

// catalogArgs returns the arguments of catalogSQL for names.
func catalogArgs(names []tableName) []any {
	schemas := make([]string, len(names))
	rels := make([]string, len(names))
	for i, n := range names {
		schemas[i], rels[i] = n.schema, n.name
	}
	return []any{schemas, rels}
}

// scanCatalog reads the rows of catalogSQL for names. A missing table is
// left out of the map.
func scanCatalog(rows pgx.Rows, names []tableName) (map[tableName]*table, error) {
	defer rows.Close()
	tables := map[tableName]*table{}
	for rows.Next() {
		var i int
		var oid *uint32
		var cols, idxs, links string
		if err := rows.Scan(&i, &oid, &cols, &idxs, &links); err != nil {
			return nil, err
		}
		if oid == nil || i < 1 || i > len(names) {
			continue
		}
		n := names[i-1]
		t, err := newTable(n.schema, n.name, *oid, cols, idxs)
		if err != nil {
			return nil, err
		}
		if err := t.link(links); err != nil {
			return nil, err
		}
		tables[n] = t
	}
	return tables, rows.Err()
}

func newTable(schema, name string, oid uint32, cols, idxs string) (*table, error) {
	t := &table{Schema: schema, Name: name, OID: oid, ident: pgx.Identifier{schema, name}.Sanitize()}
	if err := json.Unmarshal([]byte(cols), &t.Columns); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", t.ident, err)
	}
	if err := json.Unmarshal([]byte(idxs), &t.Indexes); err != nil {
		return nil, fmt.Errorf("read indexes of %s: %w", t.ident, err)
	}
	t.byName = make(map[string]int, len(t.Columns))
	for i, c := range t.Columns {
		t.byName[c.Name] = i
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00%s\x00%s\x00%s\x00%s", oid, schema, name, cols, idxs)
	t.fingerprint = hex.EncodeToString(h.Sum(nil)[:12])
	return t, nil
}

// link records the table's foreign keys, links being the JSON of
// tableLinks.
func (t *table) link(links string) error {
	if err := json.Unmarshal([]byte(links), &t.Links); err != nil {
		return fmt.Errorf("read foreign keys of %s: %w", t.ident, err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s", t.fingerprint, links)
	t.fingerprint = hex.EncodeToString(h.Sum(nil)[:12])
	return nil
}

// column returns the upstream column called name.
func (t *table) column(name string) (tableColumn, bool) {
	i, ok := t.byName[name]
	if !ok {
		return tableColumn{}, false
	}
	return t.Columns[i], true
}

// usableKey reports whether ix can find one row by equality on its columns:
// unique, on plain columns, for every row, each of them NOT NULL.
func (t *table) usableKey(ix tableIndex) bool {
	if !ix.Unique || ix.Expression || ix.Partial || len(ix.Columns) == 0 {
		return false
	}
	for _, c := range ix.Columns {
		col, ok := t.column(c)
		if !ok || !col.NotNull {
			return false
		}
	}
	return true
}

// chooseKey picks the index whose columns identify a row for changes that
// carry values for the columns in have: the primary key, else the replica
// identity index, else any other usable unique index. It returns -1 when
// there is none.
func (t *table) chooseKey(have func(string) bool) int {
	best, rank := -1, 0
	for i, ix := range t.Indexes {
		if !t.usableKey(ix) || !allOf(ix.Columns, have) {
			continue
		}
		r := 1
		switch {
		case ix.Primary:
			r = 3
		case ix.ReplIdent:
			r = 2
		}
		if r > rank {
			best, rank = i, r
		}
	}
	return best
}

// immediateUnique reports whether the table has a unique index or
// exclusion constraint, other than the one at index skip, that is checked
// row by row (not deferrable): applying a set of changes in one statement
// could then trip it where the same changes in source order would not.
func (t *table) immediateUnique(skip int) bool {
	for i, ix := range t.Indexes {
		if i != skip && !ix.Deferrable {
			return true
		}
	}
	return false
}

func allOf(names []string, have func(string) bool) bool {
	return !slices.ContainsFunc(names, func(n string) bool { return !have(n) })
}
