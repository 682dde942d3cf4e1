package apply

import (
	"fmt"
	"math"

	pgcourier "github.com/pgcourier/pgcourier"
)

// validate returns an error if b could not have come from a capture: the
// rules package wire enforces on every decoded batch, checked again because
// Apply also takes batches built in memory.
func validate(b *pgcourier.Batch) error {
	if b == nil {
		return fmt.Errorf("no batch")
	}
	if err := pgcourier.CheckNodeID(b.Source); err != nil {
		return err
	}
	if b.Seq == 0 || b.Seq > math.MaxInt64 {
		return fmt.Errorf("seq %d: want 1 or more", b.Seq)
	}
	if b.Continued && len(b.Transactions) == 0 {
		return fmt.Errorf("continued batch without a transaction to continue")
	}
	if n := b.Rows(); n > math.MaxInt32 {
		return fmt.Errorf("%d changes: too many for one batch", n)
	}
	checked := map[*pgcourier.Relation]bool{}
	for ti, tx := range b.Transactions {
		for ci, ch := range tx.Changes {
			if err := validateChange(ch, checked); err != nil {
				return fmt.Errorf("transaction %d (commit LSN %s), change %d: %w", ti, tx.CommitLSN, ci, err)
			}
		}
	}
	return nil
}

func validateChange(ch pgcourier.Change, checked map[*pgcourier.Relation]bool) error {
	rel := ch.Rel
	if rel == nil {
		return fmt.Errorf("no relation")
	}
	if !checked[rel] {
		if err := validateRelation(rel); err != nil {
			return err
		}
		checked[rel] = true
	}
	var wantNew, wantOld, oldOptional bool
	switch ch.Op {
	case pgcourier.OpInsert:
		wantNew = true
	case pgcourier.OpUpdate:
		wantNew, oldOptional = true, true
	case pgcourier.OpDelete:
		wantOld = true
	case pgcourier.OpTruncate:
	default:
		return fmt.Errorf("unknown op %s", ch.Op)
	}
	if (ch.New != nil) != wantNew {
		return fmt.Errorf("%s of %s.%s: new row %s", ch.Op, rel.Schema, rel.Name, presence(wantNew))
	}
	if (ch.Old != nil) != wantOld && !oldOptional {
		return fmt.Errorf("%s of %s.%s: old row %s", ch.Op, rel.Schema, rel.Name, presence(wantOld))
	}
	if ch.Op != pgcourier.OpTruncate && len(rel.Columns) == 0 {
		return fmt.Errorf("%s of %s.%s: the relation has no columns", ch.Op, rel.Schema, rel.Name)
	}
	for _, img := range []struct {
		name      string
		vs        []pgcourier.Value
		unchanged bool // may hold unchanged TOAST values
	}{{"new", ch.New, ch.Op == pgcourier.OpUpdate}, {"old", ch.Old, false}} {
		if img.vs == nil {
			continue
		}
		if len(img.vs) != len(rel.Columns) {
			return fmt.Errorf("%s row of %s.%s has %d values for %d columns", img.name, rel.Schema, rel.Name, len(img.vs), len(rel.Columns))
		}
		for i, v := range img.vs {
			switch {
			case v.Kind == pgcourier.Text:
			case v.Kind == pgcourier.Null && v.Text == "":
			case v.Kind == pgcourier.Unchanged && v.Text == "" && img.unchanged:
			default:
				return fmt.Errorf("%s row of %s.%s, column %s: value of kind %q is not allowed here", img.name, rel.Schema, rel.Name, rel.Columns[i].Name, v.Kind)
			}
		}
	}
	return nil
}

func validateRelation(rel *pgcourier.Relation) error {
	if rel.Schema == "" || rel.Name == "" {
		return fmt.Errorf("relation %q.%q: want a schema and a name", rel.Schema, rel.Name)
	}
	seen := make(map[string]bool, len(rel.Columns))
	for _, c := range rel.Columns {
		if c.Name == "" || seen[c.Name] {
			return fmt.Errorf("relation %s.%s: column %q is unnamed or repeated", rel.Schema, rel.Name, c.Name)
		}
		seen[c.Name] = true
	}
	return nil
}

func presence(want bool) string {
	if want {
		return "missing"
	}
	return "not allowed"
}
