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

var update = flag.Bool("update", false, "write the golden files of the newest format version in testdata")

// goldenVersion is the golden files of one format version: vN.batch, an
// encoded batch; vN.body, its uncompressed body; and vN.json, its header and
// decoded batch, readable. Decode must read vN.batch as vN.json describes it
// for as long as pgcourier exists. Only -update writes golden files, and
// only those of the newest version (Version), for starting it: the files of
// an older version never change.
type goldenVersion struct {
	version int
	batch   func(testing.TB) *pgcourier.Batch // the batch the files hold
}

// goldenVersions lists every format version, oldest first.
var goldenVersions = []goldenVersion{
	{version1, goldenBatch},
	{version2, continuedGoldenBatch},
}

func (g goldenVersion) file(ext string) string {
	return fmt.Sprintf("testdata/v%d.%s", g.version, ext)
}

func (g goldenVersion) batchFile() string { return g.file("batch") }
func (g goldenVersion) bodyFile() string  { return g.file("body") }
func (g goldenVersion) jsonFile() string  { return g.file("json") }

// continuedGoldenBatch is goldenBatch with its last transaction going on in
// the next batch: the golden batch of version 2.
func continuedGoldenBatch(t testing.TB) *pgcourier.Batch {
	b := goldenBatch(t)
	b.Continued = true
	return b
}

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
	Continued    bool   `json:"continued,omitempty"`
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
	Continued    bool           `json:"continued,omitempty"`
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
			Transactions: h.Transactions, Rows: h.Rows, Continued: h.Continued,
			FirstLSN: h.FirstLSN.String(), LastLSN: h.LastLSN.String(),
			FirstCommit: h.FirstCommit.Format(time.RFC3339Nano), LastCommit: h.LastCommit.Format(time.RFC3339Nano),
			BodyLen: h.BodyLen, Hash: hex.EncodeToString(h.Hash[:]),
		},
		Batch: goldBatch{Source: b.Source, Epoch: b.Epoch, Seq: b.Seq, Continued: b.Continued},
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

// batch returns the batch g, read from the file name, describes.
func (g *goldBatch) batch(t *testing.T, name string) *pgcourier.Batch {
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
	b := &pgcourier.Batch{Source: g.Source, Epoch: g.Epoch, Seq: g.Seq, Continued: g.Continued}
	for _, gtx := range g.Transactions {
		lsn, err := pgcourier.ParseLSN(gtx.CommitLSN)
		if err != nil {
			t.Fatal(err)
		}
		tx := pgcourier.Transaction{CommitLSN: lsn, CommitTime: at(t, gtx.CommitTime)}
		for _, gc := range gtx.Changes {
			op, ok := ops[gc.Op]
			if !ok || gc.Rel < 0 || gc.Rel >= len(rels) {
				t.Fatalf("%s: bad change %+v", name, gc)
			}
			tx.Changes = append(tx.Changes, pgcourier.Change{Rel: rels[gc.Rel], Op: op, New: values(t, name, gc.New), Old: values(t, name, gc.Old)})
		}
		b.Transactions = append(b.Transactions, tx)
	}
	return b
}

func values(t *testing.T, name string, in *[]any) []pgcourier.Value {
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
				t.Fatalf("%s: value %v: %v", name, v, err)
			}
			out[i] = txt(string(s))
		default:
			t.Fatalf("%s: value %v of type %T", name, v, v)
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

// writeGolden writes the golden files of g from g.batch.
func writeGolden(t *testing.T, g goldenVersion) {
	t.Helper()
	b := g.batch(t)
	data, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != g.version {
		t.Fatalf("Encode(golden batch of version %d) wrote version %d", g.version, h.Version)
	}
	decoded, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	js, err := marshalGolden(goldOf(h, decoded))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(g.batchFile()), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{g.batchFile(): data, g.bodyFile(): mustBody(t, b), g.jsonFile(): js} {
		if err := os.WriteFile(name, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGolden checks, for every format version, that the golden batch
// decodes as its JSON file says, and that encoding that batch gives the
// golden header and body byte for byte, whatever the zstd library makes of
// the body.
func TestGolden(t *testing.T) {
	for i, g := range goldenVersions {
		if g.version != i+1 {
			t.Fatalf("goldenVersions[%d] is version %d, want %d", i, g.version, i+1)
		}
	}
	if n := len(goldenVersions); n != Version {
		t.Fatalf("goldenVersions lists %d versions, want every version up to %d", n, Version)
	}
	for _, g := range goldenVersions {
		t.Run(fmt.Sprintf("v%d", g.version), func(t *testing.T) { testGolden(t, g) })
	}
}

func testGolden(t *testing.T, g goldenVersion) {
	if *update {
		if g.version != Version {
			t.Logf("-update leaves %s alone: the golden files of an older version never change", g.file("*"))
		} else {
			writeGolden(t, g)
		}
	}
	data, err := os.ReadFile(g.batchFile())
	if err != nil {
		if g.version == Version {
			t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
		}
		t.Fatalf("%v (restore it from version control: the files of an older version never change)", err)
	}
	wantBody, err := os.ReadFile(g.bodyFile())
	if err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(g.jsonFile())
	if err != nil {
		t.Fatal(err)
	}
	var want goldFile
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&want); err != nil {
		t.Fatalf("%s: %v", g.jsonFile(), err)
	}
	if want.Header.Version != g.version {
		t.Fatalf("%s: header version %d, want %d", g.jsonFile(), want.Header.Version, g.version)
	}
	wantBatch := want.Batch.batch(t, g.jsonFile())

	// Decode reads the golden bytes as the readable form says, relation
	// sharing included.
	got, err := Decode(data)
	if err != nil {
		t.Fatalf("Decode(%s) = %v", g.batchFile(), err)
	}
	h, err := ReadHeader(data)
	if err != nil {
		t.Fatalf("ReadHeader(%s) = %v", g.batchFile(), err)
	}
	if diff := cmp.Diff(want, goldOf(h, got)); diff != "" {
		t.Errorf("Decode(%s) differs from %s (-want +got):\n%s", g.batchFile(), g.jsonFile(), diff)
	}
	if diff := cmp.Diff(wantBatch, got); diff != "" {
		t.Errorf("Decode(%s) = got, want want (-want +got):\n%s", g.batchFile(), diff)
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
		t.Errorf("body of %s differs from %s", g.batchFile(), g.bodyFile())
	}
	if encBody := mustBody(t, wantBatch); !bytes.Equal(encBody, wantBody) {
		t.Errorf("encodeBody(%s batch) differs from %s: the body encoding changed; that needs a new format version", g.jsonFile(), g.bodyFile())
	}
	enc, err := Encode(wantBatch)
	if err != nil {
		t.Fatalf("Encode(%s batch) = %v", g.jsonFile(), err)
	}
	encHeader, n2, err := readHeader(enc)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.Header, goldOf(encHeader, wantBatch).Header); diff != "" {
		t.Errorf("ReadHeader(Encode(%s batch)) differs from the golden header (-want +got):\n%s", g.jsonFile(), diff)
	}
	// Everything before the frame checksum is the header's fields and the
	// hash, which the zstd library has no part in.
	if n2 != n || !bytes.Equal(enc[:n-8], data[:n-8]) {
		t.Errorf("Encode(%s batch) writes a header unlike that of %s:\n got %x\nwant %x", g.jsonFile(), g.batchFile(), enc[:n2-8], data[:n-8])
	}
	if !bytes.Equal(enc, data) {
		// Expected after a zstd library upgrade; the headers, bodies and
		// hashes above still match.
		t.Logf("Encode(%s batch) compresses differently from %s", g.jsonFile(), g.batchFile())
	}

	// The test batch and the golden one agree, so round-trip and fuzz cases
	// built from it stay meaningful.
	if diff := cmp.Diff(wantBatch, g.batch(t)); diff != "" {
		t.Errorf("the golden batch of version %d differs from %s (-want +got); run with -update only when starting a new format version:\n%s", g.version, g.jsonFile(), diff)
	}
}
