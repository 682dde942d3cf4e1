package pgcourier

import "testing"

func TestTableFilter(t *testing.T) {
	f := TableFilter{
		Include: []string{"public.*", "edc.visit_?", "lab.[ab]*"},
		Exclude: []string{"public.django_session", "*.tmp_*"},
	}
	tests := []struct {
		schema, table string
		want          bool
	}{
		{"public", "subject", true},
		{"public", "django_session", false},
		{"public", "tmp_import", false},
		{"edc", "visit_1", true},
		{"edc", "visit_12", false},
		{"edc", "subject", false},
		{"lab", "aliquot", true},
		{"lab", "requisition", false},
		{"pgcourier", "outbox", false},
		{"pg_catalog", "pg_class", false},
	}
	for _, tt := range tests {
		if got := f.Match(tt.schema, tt.table); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.schema, tt.table, got, tt.want)
		}
	}
	all := TableFilter{Include: []string{"*.*"}}
	if all.Match("pgcourier", "outbox") {
		t.Error(`TableFilter{"*.*"}.Match("pgcourier", "outbox") = true, want false: the pgcourier schema is never captured`)
	}
}

func TestCheckTablePattern(t *testing.T) {
	for _, p := range []string{"public.*", "*.*", "edc.visit_[0-9]"} {
		if err := CheckTablePattern(p); err != nil {
			t.Errorf("CheckTablePattern(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range []string{"", "public", ".x", "x.", "a.b.c", "public.[", "[.x"} {
		if err := CheckTablePattern(p); err == nil {
			t.Errorf("CheckTablePattern(%q) = nil, want an error", p)
		}
	}
}
