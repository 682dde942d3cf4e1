package apply

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// textArray is a text[] parameter with one element per change of a run,
// nil for NULL. It is written straight into Postgres's binary array format:
// pgx would otherwise reach each element of a []*string through reflection,
// which cost a tenth of a 1,000-row batch's time.
type textArray []*string

// useTextArrays teaches conn's type map to send a textArray as text[].
// Every other value of type text[] is encoded as before.
func useTextArrays(conn *pgx.Conn) {
	m := conn.TypeMap()
	t, ok := m.TypeForOID(pgtype.TextArrayOID)
	if !ok {
		return
	}
	m.RegisterType(&pgtype.Type{Name: t.Name, OID: t.OID, Codec: textArrayCodec{t.Codec}})
}

// textArrayCodec is text[]'s codec with a plan of its own for textArray.
type textArrayCodec struct{ pgtype.Codec }

func (c textArrayCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if _, ok := value.(textArray); ok && format == pgtype.BinaryFormatCode {
		return textArrayPlan{}
	}
	return c.Codec.PlanEncode(m, oid, format, value)
}

type textArrayPlan struct{}

var errArrayTooLarge = errors.New("text array too large for one parameter")

// Encode appends the array in the binary format of array_recv: the number
// of dimensions, whether any element is NULL, the element type, the length
// and lower bound of the one dimension, then each element as its length (-1
// for NULL) and bytes.
func (textArrayPlan) Encode(value any, buf []byte) ([]byte, error) {
	a := value.(textArray)
	if len(a) > math.MaxInt32 {
		return nil, errArrayTooLarge
	}
	hasNull := uint32(0)
	size := 20
	for _, s := range a {
		if s == nil {
			hasNull = 1
			size += 4
			continue
		}
		if len(*s) > math.MaxInt32 {
			return nil, errArrayTooLarge
		}
		size += 4 + len(*s)
	}
	buf = slices.Grow(buf, size)
	if len(a) == 0 {
		buf = binary.BigEndian.AppendUint32(buf, 0) // no dimensions
		buf = binary.BigEndian.AppendUint32(buf, 0)
		return binary.BigEndian.AppendUint32(buf, pgtype.TextOID), nil
	}
	buf = binary.BigEndian.AppendUint32(buf, 1)
	buf = binary.BigEndian.AppendUint32(buf, hasNull)
	buf = binary.BigEndian.AppendUint32(buf, pgtype.TextOID)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(a)))
	buf = binary.BigEndian.AppendUint32(buf, 1) // lower bound
	for _, s := range a {
		if s == nil {
			buf = binary.BigEndian.AppendUint32(buf, math.MaxUint32) // -1
			continue
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(*s)))
		buf = append(buf, *s...)
	}
	return buf, nil
}
