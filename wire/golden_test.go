package wire

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/pgcourier/pgcourier"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata from goldenBatch")

// The golden files of format version 1. Decode must read v1.batch as v1.json
// describes it for as long as pgcourier exists; only -update may change them,
// and only together with a new format version.
const (
	goldenBatchFile = "testdata/v1.batch" // the encoded batch
	goldenBodyFile  = "testdata/v1.body"  // its uncompressed body
	goldenJSONFile  = "testdata/v1.json"  // its header and decoded batch, readable
)

// goldFile is the readable form of an encoded batch.
type goldFile struct {
	Header goldHeader `json:"header"`
	Batch  goldBatch  `json:"batch"`
}

type goldHeader struct {
	Version      int    `json:"version"`
	Source       string `json:"source"`
	Epoch        int64  `json:"epoch"`
	Seq          uint64 `json:"seq"`
	Transactions int    `json:"transactions"`
	Rows         int    `json:"rows"`
	FirstLSN     string `json:"first_lsn"`
	LastLSN      string `json:"last_lsn"`
	FirstCommit  string `json:"first_commit"`
	LastCommit   string `json:"last_commit"`
	BodyLen      int    `json:"body_len"`
	Hash         string `json:"hash"`
}

// goldBatch lists the relations once, in the order the batch first uses
// them; changes refer to them by index, so changes sharing a *Relation share
// an index.
type goldBatch struct {
	Source       string         `json:"source"`
	Epoch        int64          `json:"epoch"`
	Seq          uint64         `json:"seq"`
	Relations    []goldRelation `json:"relations"`
	Transactions []goldTx       `json:"transactions"`
}

type goldRelation struct {
	Schema  string       `json:"schema"`
	Name    string       `json:"name"`
	Columns []goldColumn `json:"columns"`
}

type goldColumn struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Key  bool   `json:"key,omitempty"`
}

type goldTx struct {
	CommitLSN  string       `json:"commit_lsn"`
	CommitTime string       `json:"commit_time"`
	Changes    []goldChange `json:"changes"`
}

// goldChange holds values as JSON null (NULL), {"unchanged": true}, a
// string (text that is valid UTF-8) or {"hex": "…"} (any other text).
type goldChange struct {
	Op  string `json:"op"`
	Rel int    `json:"rel"`
	New *[]any `json:"new,omitempty"`
	Old *[]any `json:"old,omitempty"`
}

func goldOf(h Header, b *pgcourier.Batch) goldFile {
	g := goldFile{
		Header: goldHeader{
			Version: h.Version, Source: h.Source, Epoch: h.Epoch, Seq: h.Seq,
			Transactions: h.Transactions, Rows: h.Rows,
			FirstLSN: h.FirstLSN.String(), LastLSN: h.LastLSN.String(),
			FirstCommit: h.FirstCommit.Format(time.RFC3339Nano), LastCommit: h.LastCommit.Format(time.RFC3339Nano),
			BodyLen: h.BodyLen, Hash: hex.EncodeToString(h.Hash[:]),
		},
		Batch: goldBatch{Source: b.Source, Epoch: b.Epoch, Seq: b.Seq},
	}
	index := map[*pgcourier.Relation]int{}
	for _, tx := range b.Transactions {
		gtx := goldTx{CommitLSN: tx.CommitLSN.String(), CommitTime: tx.CommitTime.Format(time.RFC3339Nano)}
		for _, c := range tx.Changes {
			i, ok := index[c.Rel]
			if !ok {
				i = len(g.Batch.Relations)
				index[c.Rel] = i
				gr := goldRelation{Schema: c.Rel.Schema, Name: c.Rel.Name}
				for _, col := range c.Rel.Columns {
					gr.Columns = append(gr.Columns, goldColumn(col))
				}
				g.Batch.Relations = append(g.Batch.Relations, gr)
			}
			gtx.Changes = append(gtx.Changes, goldChange{Op: c.Op.String(), Rel: i, New: goldValues(c.New), Old: goldValues(c.Old)})
		}
		g.Batch.Transactions = append(g.Batch.Transactions, gtx)
	}
	return g
}

func goldValues(vals []pgcourier.Value) *[]any {
	if vals == nil {
		return nil
	}
	out := make([]any, len(vals))
	for i, v := range vals {
		switch {
		case v.Kind == pgcourier.Null:
			out[i] = nil
		case v.Kind == pgcourier.Unchanged:
			out[i] = map[string]any{"unchanged": true}
		case utf8.ValidString(v.Text):
			out[i] = v.Text
		default:
			out[i] = map[string]any{"hex": hex.EncodeToString([]byte(v.Text))}
		}
	}
	return &out
}

// batch returns the batch g describes.
func (g *goldBatch) batch(t *testing.T) *pgcourier.Batch {
	t.Helper()
	rels := make([]*pgcourier.Relation, len(g.Relations))
	for i, gr := range g.Relations {
		rel := &pgcourier.Relation{Schema: gr.Schema, Name: gr.Name}
		for _, col := range gr.Columns {
			rel.Columns = append(rel.Columns, pgcourier.Column(col))
		}
		rels[i] = rel
	}
	ops := map[string]pgcourier.Op{}
	for _, op := range []pgcourier.Op{pgcourier.OpInsert, pgcourier.OpUpdate, pgcourier.OpDelete, pgcourier.OpTruncate} {
		ops[op.String()] = op
	}
	b := &pgcourier.Batch{Source: g.Source, Epoch: g.Epoch, Seq: g.Seq}
	for _, gtx := range g.Transactions {
		lsn, err := pgcourier.ParseLSN(gtx.CommitLSN)
		if err != nil {
			t.Fatal(err)
		}
		tx := pgcourier.Transaction{CommitLSN: lsn, CommitTime: at(t, gtx.CommitTime)}
		for _, gc := range gtx.Changes {
			op, ok := ops[gc.Op]
			if !ok || gc.Rel < 0 || gc.Rel >= len(rels) {
				t.Fatalf("%s: bad change %+v", goldenJSONFile, gc)
			}
			tx.Changes = append(tx.Changes, pgcourier.Change{Rel: rels[gc.Rel], Op: op, New: values(t, gc.New), Old: values(t, gc.Old)})
		}
		b.Transactions = append(b.Transactions, tx)
	}
	return b
}

func values(t *testing.T, in *[]any) []pgcourier.Value {
	t.Helper()
	if in == nil {
		return nil
	}
	out := make([]pgcourier.Value, len(*in))
	for i, v := range *in {
		switch v := v.(type) {
		case nil:
			out[i] = null
		case string:
			out[i] = txt(v)
		case map[string]any:
			if v["unchanged"] == true {
				out[i] = unchanged
				break
			}
			s, err := hex.DecodeString(fmt.Sprint(v["hex"]))
			if err != nil {
				t.Fatalf("%s: value %v: %v", goldenJSONFile, v, err)
			}
			out[i] = txt(string(s))
		default:
			t.Fatalf("%s: value %v of type %T", goldenJSONFile, v, v)
		}
	}
	return out
}

func marshalGolden(g goldFile) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	err := enc.Encode(g)
	return buf.Bytes(), err
}

func writeGolden(t *testing.T) {
	t.Helper()
	b := goldenBatch(t)
	data, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	js, err := marshalGolden(goldOf(h, decoded))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(goldenBatchFile), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{goldenBatchFile: data, goldenBodyFile: mustBody(t, b), goldenJSONFile: js} {
		if err := os.WriteFile(name, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGolden checks that the golden v1 batch decodes as v1.json says, and
// that encoding that batch gives the golden body byte for byte, whatever the
// zstd library makes of it.
func TestGolden(t *testing.T) {
	if *update {
		writeGolden(t)
	}
	data, err := os.ReadFile(goldenBatchFile)
	if err != nil {
		t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
	}
	wantBody, err := os.ReadFile(goldenBodyFile)
	if err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(goldenJSONFile)
	if err != nil {
		t.Fatal(err)
	}
	var want goldFile
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&want); err != nil {
		t.Fatalf("%s: %v", goldenJSONFile, err)
	}
	wantBatch := want.Batch.batch(t)

	// Decode reads the golden bytes as the readable form says, relation
	// sharing included.
	got, err := Decode(data)
	if err != nil {
		t.Fatalf("Decode(%s) = %v", goldenBatchFile, err)
	}
	h, err := ReadHeader(data)
	if err != nil {
		t.Fatalf("ReadHeader(%s) = %v", goldenBatchFile, err)
	}
	if diff := cmp.Diff(want, goldOf(h, got)); diff != "" {
		t.Errorf("Decode(%s) differs from %s (-want +got):\n%s", goldenBatchFile, goldenJSONFile, diff)
	}
	if diff := cmp.Diff(wantBatch, got); diff != "" {
		t.Errorf("Decode(%s) = got, want want (-want +got):\n%s", goldenBatchFile, diff)
	}

	// The golden body is what the golden frame holds and what Encode writes.
	zd, err := zstdDecoder()
	if err != nil {
		t.Fatal(err)
	}
	_, n, err := readHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	body, err := zd.DecodeAll(data[n:], make([]byte, 0, h.BodyLen))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, wantBody) {
		t.Errorf("body of %s differs from %s", goldenBatchFile, goldenBodyFile)
	}
	if encBody := mustBody(t, wantBatch); !bytes.Equal(encBody, wantBody) {
		t.Errorf("encodeBody(%s batch) differs from %s: the body encoding changed; that needs a new format version", goldenJSONFile, goldenBodyFile)
	}
	enc, err := Encode(wantBatch)
	if err != nil {
		t.Fatalf("Encode(%s batch) = %v", goldenJSONFile, err)
	}
	encHeader, err := ReadHeader(enc)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.Header, goldOf(encHeader, wantBatch).Header); diff != "" {
		t.Errorf("ReadHeader(Encode(%s batch)) differs from the golden header (-want +got):\n%s", goldenJSONFile, diff)
	}
	if !bytes.Equal(enc, data) {
		// Expected after a zstd library upgrade; the bodies and hashes above
		// still match.
		t.Logf("Encode(%s batch) compresses differently from %s", goldenJSONFile, goldenBatchFile)
	}

	// The test batch and the golden one agree, so round-trip and fuzz cases
	// built from goldenBatch stay meaningful.
	if diff := cmp.Diff(wantBatch, goldenBatch(t)); diff != "" {
		t.Errorf("goldenBatch differs from %s (-want +got); run with -update only when starting a new format version:\n%s", goldenJSONFile, diff)
	}
}
