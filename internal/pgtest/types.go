package pgtest

// TypeCase is a column type and SQL literals at its edges, for tests that
// check that values survive capture and apply exactly as Postgres prints
// them.
type TypeCase struct {
	Type   string   // as in CREATE TABLE, such as "numeric(10,2)"
	Values []string // SQL literals
}

// TypeSetup creates the enum, domain and composite types TypeCases uses.
const TypeSetup = `
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TYPE address AS (street text, town text);`

// TypeCases are the built-in types a captured and applied value must carry
// unchanged, each with values at its edges.
var TypeCases = []TypeCase{
	{"smallint", []string{"-32768", "32767", "0"}},
	{"integer", []string{"-2147483648", "2147483647"}},
	{"bigint", []string{"-9223372036854775808", "9223372036854775807"}},
	{"numeric", []string{"'NaN'", "'123456789012345678901234567890.123456789012345678901234567890'", "'-0.000000000000000000001'", "'1e100'"}},
	{"numeric(10,2)", []string{"'3.14159'", "'-99999999.99'"}},
	{"real", []string{"'Infinity'", "'-Infinity'", "'NaN'", "'-0'", "'3.4028235e38'", "'1.17549435e-38'"}},
	{"double precision", []string{"'Infinity'", "'-0'", "'0.1'", "'2.2250738585072014e-308'", "'1.7976931348623157e308'"}},
	{"text", []string{"''", "'plain'", "E'tab\\tnewline\\nquote''back\\\\slash'", "'Ünïcødé ✓ 漢字 🧪 ﷽'", "'NULL'"}},
	{"varchar(8)", []string{"'short'"}},
	{"char(4)", []string{"'ab'"}},
	{"bytea", []string{"'\\x00ff10'", "''", "decode(repeat('00', 300), 'hex')"}},
	{"boolean", []string{"true", "false"}},
	{"date", []string{"'2026-11-25'", "'infinity'", "'-infinity'", "'4713-01-01 BC'"}},
	{"time", []string{"'23:59:59.999999'", "'00:00'"}},
	{"timetz", []string{"'12:34:56+05:30'", "'00:00:00-11'"}},
	{"timestamp", []string{"'2026-11-25 23:17:38.123456'", "'infinity'", "'1999-01-08 04:05:06'"}},
	{"timestamptz", []string{"'2026-11-25 23:17:38.123456+03'", "'infinity'", "'-infinity'"}},
	{"interval", []string{"'1 year 2 mons 3 days 04:05:06.789'", "'-1 day'", "'0'"}},
	{"uuid", []string{"'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"}},
	{"json", []string{`'{"b": 1,  "a": [1, 2]}'`, "'null'"}},
	{"jsonb", []string{`'{"b": 1, "a": [1, 2.50], "ü": "漢"}'`, `'"string"'`}},
	{"integer[]", []string{"'{1,NULL,3}'", "'{{1,2},{3,4}}'", "'{}'"}},
	{"text[]", []string{`'{"a b","c,d",NULL,"NULL","\"q\""}'`}},
	{"inet", []string{"'192.168.0.1/24'", "'::1'"}},
	{"cidr", []string{"'10.0.0.0/8'", "'2001:db8::/32'"}},
	{"macaddr", []string{"'08:00:2b:01:02:03'"}},
	{"mood", []string{"'happy'", "'sad'"}},
	{"positive_int", []string{"42"}},
	{"address", []string{"ROW('1 Main St', 'Kisumu')", "ROW(NULL, 'a,b')"}},
	{"int4range", []string{"'[1,10)'", "'empty'"}},
	{"tstzrange", []string{"'[2026-01-01,infinity)'"}},
	{"bit(4)", []string{"B'1010'"}},
	{"varbit", []string{"B'101'", "B''"}},
	{"tsvector", []string{"'the quick brown fox'::tsvector"}},
	{"money", []string{"'12.34'", "'-0.01'"}},
	{"point", []string{"'(1.5,-2)'"}},
	{"xml", []string{"'<a href=\"x\">text &amp; more</a>'"}},
	{"oid", []string{"4294967295"}},
}
