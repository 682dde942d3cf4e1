package wire

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/pgcourier/pgcourier"
)

// edcColumns are the audit columns every edc model has, followed by the
// model's own.
func edcColumns(own ...pgcourier.Column) []pgcourier.Column {
	cols := []pgcourier.Column{
		{Name: "id", Type: "uuid", Key: true},
		{Name: "created", Type: "timestamp with time zone"},
		{Name: "modified", Type: "timestamp with time zone"},
		{Name: "user_created", Type: "character varying(50)"},
		{Name: "user_modified", Type: "character varying(50)"},
		{Name: "hostname_created", Type: "character varying(60)"},
		{Name: "hostname_modified", Type: "character varying(50)"},
		{Name: "revision", Type: "character varying(75)"},
		{Name: "device_created", Type: "character varying(10)"},
		{Name: "device_modified", Type: "character varying(10)"},
		{Name: "site_id", Type: "integer"},
	}
	return append(cols, own...)
}

// edcBatch returns a batch like a field laptop's: rows transactions'
// worth of subjects and their visits (five rows per transaction), with
// uuid keys, timestamps and a ~300-byte jsonb per visit.
func edcBatch(rows int) *pgcourier.Batch {
	rnd := rand.New(rand.NewPCG(7, 11))
	uuid := func() string {
		var b [16]byte
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
		return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	}
	start := time.Date(2024, 5, 1, 7, 30, 0, 0, time.UTC)
	stamp := func(t time.Time) string { return t.Format("2006-01-02 15:04:05.999999-07") }

	subject := &pgcourier.Relation{Schema: "public", Name: "edc_registration_registeredsubject", Columns: edcColumns(
		pgcourier.Column{Name: "subject_identifier", Type: "character varying(50)"},
		pgcourier.Column{Name: "screening_identifier", Type: "character varying(36)"},
		pgcourier.Column{Name: "initials", Type: "character varying(3)"},
		pgcourier.Column{Name: "dob", Type: "date"},
		pgcourier.Column{Name: "gender", Type: "character varying(1)"},
		pgcourier.Column{Name: "consent_datetime", Type: "timestamp with time zone"},
		pgcourier.Column{Name: "identity", Type: "character varying(250)"},
	)}
	visit := &pgcourier.Relation{Schema: "public", Name: "meta_subject_subjectvisit", Columns: edcColumns(
		pgcourier.Column{Name: "subject_identifier", Type: "character varying(50)"},
		pgcourier.Column{Name: "appointment_id", Type: "uuid"},
		pgcourier.Column{Name: "visit_code", Type: "character varying(25)"},
		pgcourier.Column{Name: "visit_code_sequence", Type: "integer"},
		pgcourier.Column{Name: "report_datetime", Type: "timestamp with time zone"},
		pgcourier.Column{Name: "reason", Type: "character varying(25)"},
		pgcourier.Column{Name: "info_source", Type: "character varying(25)"},
		pgcourier.Column{Name: "comments", Type: "text"},
		pgcourier.Column{Name: "data", Type: "jsonb"},
	)}
	audit := func(t time.Time, id string) []pgcourier.Value {
		return []pgcourier.Value{
			txt(id), txt(stamp(t)), txt(stamp(t.Add(time.Duration(rnd.IntN(600)) * time.Second))),
			txt("ra-07"), txt("ra-07"), txt("edc-laptop-07.kisumu"), txt("edc-laptop-07.kisumu"),
			txt("2.3.14:develop@4d2a1f9"), txt("07"), txt("07"), txt("40"),
		}
	}
	reasons := []string{"scheduled", "unscheduled", "missed"}
	sources := []string{"patient", "patient_representative", "hospital_notes"}
	symptoms := []string{"cough", "fever", "headache", "night_sweats", "weight_loss", "rash"}

	b := &pgcourier.Batch{Source: "laptop-07", Epoch: 1, Seq: 1}
	lsn := pgcourier.LSN(0x16B374D848)
	for n := 0; n < rows; {
		t := start.Add(time.Duration(len(b.Transactions)) * 97 * time.Second).Add(time.Duration(rnd.IntN(1e6)) * time.Microsecond)
		tx := pgcourier.Transaction{CommitLSN: lsn, CommitTime: t}
		lsn += pgcourier.LSN(4000 + rnd.IntN(4000))

		subjectID := fmt.Sprintf("105-40-%04d-%d", rnd.IntN(10000), rnd.IntN(10))
		s := append(audit(t, uuid()),
			txt(subjectID), txt(uuid()), txt(string(rune('A'+rnd.IntN(26)))+string(rune('A'+rnd.IntN(26)))+"K"),
			txt(fmt.Sprintf("19%02d-%02d-%02d", 50+rnd.IntN(50), 1+rnd.IntN(12), 1+rnd.IntN(28))),
			txt([]string{"M", "F"}[rnd.IntN(2)]), txt(stamp(t.Add(-time.Hour))), txt(fmt.Sprintf("%09d", rnd.IntN(1e9))))
		op := pgcourier.OpInsert
		if rnd.IntN(2) == 0 {
			op = pgcourier.OpUpdate
		}
		tx.Changes = append(tx.Changes, pgcourier.Change{Rel: subject, Op: op, New: s})
		n++

		for k := 0; k < 4 && n < rows; k++ {
			var syms []string
			for _, sym := range symptoms {
				if rnd.IntN(3) == 0 {
					syms = append(syms, fmt.Sprintf("%q", sym))
				}
			}
			data := fmt.Sprintf(`{"bp_dia": %d, "bp_sys": %d, "on_art": %t, "weight_kg": %.1f, "height_cm": %d, "clinician": "ra-07", "next_appt": "2024-%02d-%02d", "hiv_result": %q, "temperature": %.1f, "symptoms": [%s], "viral_load": %d, "notes": "participant seen at home, no concerns raised"}`,
				60+rnd.IntN(30), 100+rnd.IntN(50), rnd.IntN(2) == 0, 45+rnd.Float64()*40, 150+rnd.IntN(40),
				6+rnd.IntN(6), 1+rnd.IntN(28), []string{"NEG", "POS", "IND"}[rnd.IntN(3)], 36+rnd.Float64()*2,
				strings.Join(syms, ", "), rnd.IntN(100000))
			v := append(audit(t, uuid()),
				txt(subjectID), txt(uuid()), txt(fmt.Sprintf("%d000", 1+k)), txt("0"), txt(stamp(t)),
				txt(reasons[rnd.IntN(len(reasons))]), txt(sources[rnd.IntN(len(sources))]), null, txt(data))
			tx.Changes = append(tx.Changes, pgcourier.Change{Rel: visit, Op: pgcourier.OpInsert, New: v})
			n++
		}
		b.Transactions = append(b.Transactions, tx)
	}
	return b
}

const benchRows = 1000

func BenchmarkEncode(b *testing.B) {
	batch := edcBatch(benchRows)
	data, err := Encode(batch)
	if err != nil {
		b.Fatal(err)
	}
	h, err := ReadHeader(data)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(h.BodyLen))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data))/benchRows, "bytes/row")
	b.ReportMetric(float64(h.BodyLen)/float64(len(data)), "ratio")
}

func BenchmarkDecode(b *testing.B) {
	data, err := Encode(edcBatch(benchRows))
	if err != nil {
		b.Fatal(err)
	}
	h, err := ReadHeader(data)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(h.BodyLen))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data))/benchRows, "bytes/row")
	b.ReportMetric(float64(h.BodyLen)/float64(len(data)), "ratio")
}

// BenchmarkLevel compares zstd levels on the body of the benchmark batch:
// the evidence behind the level Encode uses.
func BenchmarkLevel(b *testing.B) {
	body, err := encodeBody(edcBatch(benchRows), nil)
	if err != nil {
		b.Fatal(err)
	}
	dec, err := zstdDecoder()
	if err != nil {
		b.Fatal(err)
	}
	for _, level := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBetterCompression} {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
		if err != nil {
			b.Fatal(err)
		}
		frame := enc.EncodeAll(body, nil)
		b.Run("compress/"+level.String(), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			dst := make([]byte, 0, len(body))
			for b.Loop() {
				dst = enc.EncodeAll(body, dst[:0])
			}
			b.ReportMetric(float64(len(frame))/benchRows, "bytes/row")
			b.ReportMetric(float64(len(body))/float64(len(frame)), "ratio")
		})
		b.Run("decompress/"+level.String(), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			dst := make([]byte, 0, len(body))
			for b.Loop() {
				if dst, err = dec.DecodeAll(frame, dst[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestEDCBatch(t *testing.T) {
	b := edcBatch(benchRows)
	if got := b.Rows(); got != benchRows {
		t.Fatalf("edcBatch(%d).Rows() = %d, want %d", benchRows, got, benchRows)
	}
	data, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.Rows() != benchRows {
		t.Errorf("Decode(Encode(edcBatch)).Rows() = %d, want %d", got.Rows(), benchRows)
	}
	h, _ := ReadHeader(data)
	t.Logf("%d rows: body %d bytes, encoded %d bytes (%.1f bytes/row, ratio %.2f)",
		benchRows, h.BodyLen, len(data), float64(len(data))/benchRows, float64(h.BodyLen)/float64(len(data)))
}
