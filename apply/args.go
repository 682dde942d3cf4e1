package apply

import (
	"encoding/json"
	"strings"
	"time"

	pgcourier "github.com/pgcourier/pgcourier"
)

// args binds the parameters of statement sm of run r: arrays with one
// element per change, or single values for a run of one change.
func (w *Writer) args(r *run, sm stmt, b *pgcourier.Batch, origin uint32) []any {
	args := make([]any, len(sm.args))
	single := r.single()
	for i, a := range sm.args {
		switch a.kind {
		case argSource:
			args[i] = b.Source
		case argEpoch:
			args[i] = b.Epoch
		case argSeq:
			args[i] = int64(b.Seq)
		case argOrigin:
			args[i] = origin
		case argNode:
			args[i] = w.node
		case argPos:
			args[i] = perChange(r, single, func(it item) int32 { return it.pos })
		case argTime:
			args[i] = perChange(r, single, func(it item) time.Time { return it.at })
		case argLSN:
			args[i] = perChange(r, single, func(it item) string { return it.lsn.String() })
		case argOp:
			args[i] = perChange(r, single, func(it item) string { return string(it.ch.Op) })
		case argOld:
			args[i] = texts(r, single, func(it item) *string {
				if it.ch.Old == nil {
					return nil
				}
				s := imageJSON(r.p.rel, it.ch.Old, true)
				return &s
			})
		case argNew:
			args[i] = texts(r, single, func(it item) *string { return text(it.ch.New, a.col) })
		case argKey:
			args[i] = texts(r, single, func(it item) *string { return text(lookup(it.ch), a.col) })
		}
	}
	return args
}

// perChange returns f of every change of r, or of its only change.
func perChange[T any](r *run, single bool, f func(item) T) any {
	if single {
		return f(r.items[0])
	}
	v := make([]T, len(r.items))
	for j, it := range r.items {
		v[j] = f(it)
	}
	return v
}

// texts returns f of every change of r as a textArray, or of its only
// change.
func texts(r *run, single bool, f func(item) *string) any {
	if single {
		return f(r.items[0])
	}
	v := make(textArray, len(r.items))
	for j, it := range r.items {
		v[j] = f(it)
	}
	return v
}

// text returns the text of value c of image vs; nil for NULL, an unchanged
// value or no image.
func text(vs []pgcourier.Value, c int) *string {
	if vs == nil || vs[c].Kind != pgcourier.Text {
		return nil
	}
	return &vs[c].Text
}

// imageJSON renders a row image as a JSON object of text values (null for
// NULL), leaving unchanged values out. With identityOnly, an old image of
// a table whose replica identity is its key keeps only the key columns:
// the others were not sent.
func imageJSON(rel *pgcourier.Relation, vs []pgcourier.Value, identityOnly bool) string {
	anyKey := false
	for _, c := range rel.Columns {
		anyKey = anyKey || c.Key
	}
	var sb strings.Builder
	sb.WriteByte('{')
	first := true
	for i, v := range vs {
		if v.Kind == pgcourier.Unchanged || (identityOnly && anyKey && !rel.Columns[i].Key) {
			continue
		}
		if !first {
			sb.WriteByte(',')
		}
		first = false
		name, _ := json.Marshal(rel.Columns[i].Name)
		sb.Write(name)
		sb.WriteByte(':')
		if v.Kind == pgcourier.Null {
			sb.WriteString("null")
			continue
		}
		text, _ := json.Marshal(v.Text)
		sb.Write(text)
	}
	sb.WriteByte('}')
	return sb.String()
}
