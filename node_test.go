package pgcourier

import "testing"

func TestCheckNodeID(t *testing.T) {
	tests := []struct {
		id     string
		wantOK bool
	}{
		{"laptop-07", true},
		{"site.kisumu_2", true},
		{"a", true},
		{"", false},
		{"Laptop-07", false},
		{"-laptop", false},
		{"laptop 07", false},
		{"läptop", false},
		{"laptop/07", false},
		{"a234567890123456789012345678901234567890", true},
		{"a2345678901234567890123456789012345678901", false},
	}
	for _, tt := range tests {
		err := CheckNodeID(tt.id)
		if (err == nil) != tt.wantOK {
			t.Errorf("CheckNodeID(%q) = %v, want ok=%v", tt.id, err, tt.wantOK)
		}
	}
}

func TestSlotName(t *testing.T) {
	if got, want := SlotName("laptop-07.kisumu"), "pgcourier_laptop_07_kisumu"; got != want {
		t.Errorf("SlotName = %q, want %q", got, want)
	}
	if got := SlotName("a234567890123456789012345678901234567890"); len(got) > 63 {
		t.Errorf("SlotName of the longest id is %d bytes, want at most 63", len(got))
	}
}

func TestRoles(t *testing.T) {
	for _, r := range Roles {
		if !r.Valid() {
			t.Errorf("Role(%q).Valid() = false, want true", r)
		}
	}
	if Role("hub").Valid() {
		t.Error(`Role("hub").Valid() = true, want false`)
	}
	if RoleClient.Listens() || !RoleCentral.Listens() {
		t.Error("Listens: client must not listen, central must")
	}
	if RoleCentral.MayCapture() || !RoleServer.MayCapture() {
		t.Error("MayCapture: central must not capture, server may")
	}
}

func TestLSN(t *testing.T) {
	for _, s := range []string{"0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"} {
		l, err := ParseLSN(s)
		if err != nil || l.String() != s {
			t.Errorf("ParseLSN(%q) = %v, %v; want it to print back as %q", s, l, err, s)
		}
	}
	for _, s := range []string{"", "16", "16/", "x/1", "1/2/3", "1/2 "} {
		if l, err := ParseLSN(s); err == nil {
			t.Errorf("ParseLSN(%q) = %v, want an error", s, l)
		}
	}
}
