package apply

import (
	"context"
	"encoding/json"
	"testing"
)

func TestListConflicts(t *testing.T) {
	ctx := context.Background()
	c, w := upstream(t, `CREATE TABLE visit (id int PRIMARY KEY, weight int)`)
	rel := relation("visit", "id integer key", "weight integer")

	// laptop-08 writes the row later than laptop-07's older edit arrives.
	mustApply(t, w, batch("laptop-08", 1, txn(at(10), ins(rel, "1", "60"))))
	mustApply(t, w, batch("laptop-07", 1, txn(at(20), ins(rel, "1", "70")))) // key collision
	mustApply(t, w, batch("laptop-07", 2, txn(at(5), ins(rel, "2", "80"))))
	c.Exec(t, `UPDATE pgcourier.conflicts SET resolved_at = now(), resolution = 'kept upstream row' WHERE id = (SELECT min(id) FROM pgcourier.conflicts)`)
	mustApply(t, w, batch("laptop-08", 2, txn(at(30), upd(rel, "2", "81"))))
	mustApply(t, w, batch("laptop-07", 3, txn(at(25), upd(rel, "2", "82")))) // older than laptop-08's: loses

	conn := c.Connect(t)
	open, err := ListConflicts(ctx, conn, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != 1 || open[0].Rule != "last_writer" || open[0].Source != "laptop-07" || open[0].Seq != 3 ||
		open[0].Table != "public.visit" || open[0].StoredSource != "laptop-08" {
		t.Fatalf("ListConflicts(open) = %+v, want laptop-07 seq 3 losing to laptop-08 on public.visit", open)
	}
	var incoming, stored map[string]any
	if err := json.Unmarshal(open[0].Incoming, &incoming); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(open[0].Stored, &stored); err != nil {
		t.Fatal(err)
	}
	if incoming["weight"] != "82" || stored["weight"] != "81" {
		t.Errorf("conflict rows = incoming %v, stored %v; want weight 82 incoming, 81 stored", incoming, stored)
	}

	all, err := ListConflicts(ctx, conn, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Rule != "key_collision" || all[0].ResolvedAt == nil || all[0].Resolution != "kept upstream row" {
		t.Errorf("ListConflicts(all) = %+v, want the resolved key collision first, then the open one", all)
	}
	last, err := ListConflicts(ctx, conn, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(last) != 1 || last[0].ID != all[1].ID {
		t.Errorf("ListConflicts(all, limit 1) = %+v, want only the most recent", last)
	}
}
