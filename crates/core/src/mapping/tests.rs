use proptest::prelude::*;
use serde_json::{json, Map, Value};
use time::macros::datetime;
use uuid::Uuid;

use super::*;
use crate::entity::{EntitySet, REGARDING_SETS};
use crate::record::Record;

const ID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const ACCOUNT: &str = "6f1c2a4e-0000-4000-8000-000000000001";

fn opts() -> RenderOptions<'static> {
    RenderOptions::new(datetime!(2026-11-25 08:00 UTC))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn record(set: EntitySet, state: &str, f: Value) -> Record {
    Record {
        id: Uuid::parse_str(ID).unwrap(),
        set,
        version: 1,
        owner_id: Uuid::nil(),
        state: state.into(),
        created_at: "2026-11-01T00:00:00.000000Z".into(),
        modified_at: "2026-11-01T00:00:00.000000Z".into(),
        fields: fields(f),
    }
}

fn parse(s: &str) -> MailboxItem {
    parse_item(s.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{s}"))
}

fn round_trip(item: &MailboxItem, o: &RenderOptions<'_>) -> MailboxItem {
    let bytes = render_item(item, o).unwrap();
    let back = parse_item(&bytes).unwrap_or_else(|e| panic!("{e}\n{}", text(&bytes)));
    assert!(
        back.problems.is_empty(),
        "{:?}\n{}",
        back.problems,
        text(&bytes)
    );
    back
}

fn same(a: &MailboxItem, b: &MailboxItem) {
    let mut b = b.clone();
    b.problems.clear();
    assert_eq!(a, &b);
}

fn contact() -> Record {
    record(
        EntitySet::Contacts,
        "active",
        json!({
            "first_name": "Ann", "last_name": "Lee, Jr.", "email": "ann@example.com",
            "email2": "ann.lee@example.org", "phone": "+49 30 1234", "mobile": "+49 170 5555",
            "job_title": "Buyer; purchasing", "street": "Main St 1\nBuilding B", "city": "Berlin",
            "postal_code": "10115", "country": "Germany", "birthday": "1980-05-17",
            "notes": "Met at the fair.\nLikes coffee, not tea.",
            "account_id": ACCOUNT
        }),
    )
}

// ------------------------------------------------------------- contacts

#[test]
fn r_f2_contact_round_trip() {
    let item = MailboxItem::from_records(&contact(), &[], "ann-1", true);
    assert!(
        !item.fields.contains_key("account_id"),
        "only mailbox fields"
    );
    for version in [VcardVersion::V4, VcardVersion::V3] {
        let o = RenderOptions {
            vcard_version: version,
            ..opts()
        };
        let bytes = render_item(&item, &o).unwrap();
        let s = text(&bytes);
        assert!(s.contains("N:Lee\\, Jr.;Ann;;;"), "{s}");
        assert!(s.contains("FN:Ann Lee\\, Jr."), "{s}");
        assert!(s.contains("TEL;TYPE=WORK,VOICE:+49 30 1234"), "{s}");
        assert!(s.contains("TEL;TYPE=CELL:+49 170 5555"), "{s}");
        assert!(s.contains(&format!("X-CRM-ID:{ID}")), "{s}");
        assert!(s.contains("UID:ann-1"), "{s}");
        match version {
            VcardVersion::V4 => {
                assert!(
                    s.contains("VERSION:4.0") && s.contains("BDAY:19800517"),
                    "{s}"
                )
            }
            VcardVersion::V3 => {
                assert!(
                    s.contains("VERSION:3.0") && s.contains("BDAY:1980-05-17"),
                    "{s}"
                )
            }
        }
        same(&item, &round_trip(&item, &o));
    }
}

#[test]
fn reads_vcard_3_0_from_a_phone() {
    let card = "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//iPhone OS 17.0//EN\r\n\
N:Doe;John;Q.;Dr.;\r\nFN:Dr. John Q. Doe\r\nORG:Acme Inc.;Sales\r\nTITLE:Head of Sales\r\n\
item1.EMAIL;type=INTERNET;type=pref:john@acme.example\r\nitem1.X-ABLabel:_$!<Other>!$_\r\n\
EMAIL;type=INTERNET;type=HOME:jd@home.example\r\nEMAIL;type=INTERNET:third@x.example\r\n\
TEL;type=HOME;type=VOICE:+1 555 0100\r\nTEL;type=CELL;type=VOICE:+1 555 0101\r\n\
TEL;type=WORK;type=VOICE:+1 555 0102\r\nTEL;type=WORK;type=FAX:+1 555 0103\r\n\
ADR;type=HOME:;;1 Home Rd;Hometown;;11111;USA\r\n\
ADR;type=WORK;type=pref:;;2 Work Ave\\nSuite 5;Springfield;IL;62701;USA\r\n\
BDAY;value=date:1975-02-28\r\nNOTE:Prefers e-mail\\, not calls.\r\n\
CATEGORIES:VIP,Tracked to CRM\r\nX-CRM-ID:1B4E28BA-2FA1-11D2-883F-0016D3CCA427\r\n\
UID:7D1F2B4C-0000-4000-8000-00000000ABCD\r\nEND:VCARD\r\n";
    let item = parse(card);
    assert_eq!(item.set, EntitySet::Contacts);
    assert_eq!(item.uid, "7D1F2B4C-0000-4000-8000-00000000ABCD");
    assert_eq!(item.crm_id, Some(Uuid::parse_str(ID).unwrap()));
    assert!(item.tracked);
    assert_eq!(
        Value::Object(item.fields.clone()),
        json!({
            "last_name": "Doe", "first_name": "John", "email": "john@acme.example",
            "email2": "jd@home.example", "phone": "+1 555 0102", "mobile": "+1 555 0101",
            "job_title": "Head of Sales", "street": "2 Work Ave\nSuite 5", "city": "Springfield",
            "postal_code": "62701", "country": "USA", "birthday": "1975-02-28",
            "notes": "Prefers e-mail, not calls."
        })
    );
    assert!(item.problems.is_empty(), "{:?}", item.problems);
}

#[test]
fn reads_vcard_4_0() {
    let card = "BEGIN:VCARD\nVERSION:4.0\nUID:urn:uuid:0f0e\nFN:Zoë Ng\nN:Ng;Zoë;;;\n\
EMAIL;TYPE=work;PREF=1:zoe@example.com\nTEL;VALUE=uri;TYPE=\"work,voice\":tel:+1-555-0199\n\
BDAY:--0415\nEND:VCARD\n";
    let item = parse(card);
    assert_eq!(item.uid, "urn:uuid:0f0e");
    assert_eq!(item.fields["first_name"], "Zoë");
    assert_eq!(item.fields["phone"], "+1-555-0199");
    assert!(!item.fields.contains_key("birthday"));
    assert!(
        item.problems.iter().any(|p| p.contains("BDAY")),
        "{:?}",
        item.problems
    );
    assert!(!item.tracked);
    assert_eq!(item.crm_id, None);
}

#[test]
fn r_f4_company_is_written_only_when_given_and_never_read() {
    let item = MailboxItem::from_records(&contact(), &[], "ann-1", false);
    let plain = text(&render_item(&item, &opts()).unwrap());
    assert!(!plain.contains("ORG"), "{plain}");
    let o = RenderOptions {
        company: Some("Acme, Inc."),
        ..opts()
    };
    let with = render_item(&item, &o).unwrap();
    assert!(text(&with).contains("ORG:Acme\\, Inc."), "{}", text(&with));
    let back = parse_item(&with).unwrap();
    assert!(!back.fields.values().any(|v| v == "Acme, Inc."));
    // Not given: the user's own ORG stays as it is.
    let o = RenderOptions {
        existing: Some(&with),
        ..opts()
    };
    assert!(text(&render_item(&item, &o).unwrap()).contains("ORG:Acme\\, Inc."));
}

#[test]
fn r_m1_tracking_category_marks_items() {
    let existing = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:c1\r\nN:Lee;Ann;;;\r\nFN:Ann Lee\r\n\
CATEGORIES:VIP,Tracked to CRM,Golf\r\nEND:VCARD\r\n";
    let before = parse(existing);
    assert!(before.tracked);
    let mut item = before.clone();
    item.tracked = false;
    let o = RenderOptions {
        existing: Some(existing.as_bytes()),
        ..opts()
    };
    let untracked = render_item(&item, &o).unwrap();
    let s = text(&untracked);
    assert!(
        s.contains("CATEGORIES:VIP,Golf") && !s.contains("Tracked"),
        "{s}"
    );
    assert!(!parse_item(&untracked).unwrap().tracked);
    item.tracked = true;
    let o = RenderOptions {
        existing: Some(&untracked),
        ..opts()
    };
    let s = text(&render_item(&item, &o).unwrap());
    assert!(s.contains("CATEGORIES:VIP,Golf,Tracked to CRM"), "{s}");

    // Events and to-dos too; a client may write the marker in any case.
    let ics = "BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nUID:t1\r\nSUMMARY:x\r\n\
CATEGORIES:tracked to crm\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";
    assert!(parse(ics).tracked);
    let mut todo = MailboxItem::new(EntitySet::Tasks, "t2");
    todo.fields.insert("subject".into(), "Call back".into());
    todo.tracked = true;
    let s = text(&render_item(&todo, &opts()).unwrap());
    assert!(s.contains("CATEGORIES:Tracked to CRM"), "{s}");
}

#[test]
fn r_m2_x_crm_id_relinks() {
    let card = format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:lost-cache\r\nN:Lee;Ann;;;\r\nX-CRM-ID:{ID}\r\nEND:VCARD\r\n"
    );
    assert_eq!(parse(&card).crm_id, Some(Uuid::parse_str(ID).unwrap()));
    let bad = card.replace(ID, "not-a-uuid");
    let item = parse(&bad);
    assert_eq!(item.crm_id, None);
    assert!(
        item.problems[0].contains("line 5: X-CRM-ID"),
        "{:?}",
        item.problems
    );

    let mut event = appointment_item();
    event.crm_id = Some(Uuid::parse_str(ID).unwrap());
    let s = text(&render_item(&event, &opts()).unwrap());
    assert!(s.contains(&format!("X-CRM-ID:{ID}")), "{s}");
    assert!(
        s.contains(&format!("X-CRM-REGARDING;X-CRM-SET=accounts:{ACCOUNT}")),
        "{s}"
    );
    assert_eq!(parse(&s).crm_id, event.crm_id);
    // Unlinking removes it.
    event.crm_id = None;
    let o = RenderOptions {
        existing: Some(s.as_bytes()),
        ..opts()
    };
    let again = text(&render_item(&event, &o).unwrap());
    assert!(!again.contains("X-CRM-ID"), "{again}");
}

#[test]
fn existing_vcard_keeps_what_the_mapping_does_not_own() {
    let existing =
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c9\r\nN:Lee;Ann;M.;Dr.;PhD\r\nFN:Dr. Ann Lee\r\n\
EMAIL;TYPE=INTERNET,PREF:ann@example.com\r\nEMAIL;TYPE=HOME:ann@home.example\r\n\
EMAIL:third@example.net\r\nTEL;TYPE=HOME:+1 111\r\nTEL;TYPE=WORK:+1 222\r\n\
ADR;TYPE=WORK:PO 9;Floor 3;Old St 1;Springfield;IL;62701;USA\r\n\
PHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQSkZJRgABAQ==\r\nX-SOCIALPROFILE;TYPE=twitter:@ann\r\n\
ORG:Old Co\r\nEND:VCARD\r\n";
    let mut item = parse(existing);
    item.fields.insert("phone".into(), "+1 333".into());
    item.fields.insert("street".into(), "New St 2".into());
    item.fields.insert("job_title".into(), "CEO".into());
    let o = RenderOptions {
        existing: Some(existing.as_bytes()),
        ..opts()
    };
    let s = text(&render_item(&item, &o).unwrap());
    for kept in [
        "N:Lee;Ann;M.;Dr.;PhD",
        "FN:Dr. Ann Lee",
        "EMAIL;TYPE=INTERNET,PREF:ann@example.com",
        "EMAIL;TYPE=HOME:ann@home.example",
        "EMAIL:third@example.net",
        "TEL;TYPE=HOME:+1 111",
        "TEL;TYPE=WORK:+1 333",
        "ADR;TYPE=WORK:PO 9;Floor 3;New St 2;Springfield;IL;62701;USA",
        "PHOTO",
        "X-SOCIALPROFILE;TYPE=twitter:@ann",
        "ORG:Old Co",
        "TITLE:CEO",
    ] {
        assert!(s.contains(kept), "{kept} missing in\n{s}");
    }
    same(&item, &parse(&s));
}

#[test]
fn r_f1_keep_fields_leave_the_mailbox_value() {
    let existing = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:c1\r\nN:Lee;Ann;;;\r\n\
TEL;TYPE=CELL:+1 999\r\nNOTE:private note\r\nEND:VCARD\r\n";
    let mut item = parse(existing);
    item.fields.insert("mobile".into(), "+1 000".into());
    item.fields.remove("notes");
    let o = RenderOptions {
        existing: Some(existing.as_bytes()),
        keep_fields: &["mobile", "notes"],
        ..opts()
    };
    let s = text(&render_item(&item, &o).unwrap());
    assert!(
        s.contains("TEL;TYPE=CELL:+1 999") && s.contains("NOTE:private note"),
        "{s}"
    );
}

#[test]
fn lone_email2_keeps_its_place() {
    let mut item = MailboxItem::new(EntitySet::Contacts, "c2");
    item.fields = fields(json!({"last_name": "Lee", "email2": "second@example.com"}));
    let bytes = render_item(&item, &opts()).unwrap();
    assert!(text(&bytes).contains("X-CRM-FIELD=email2"));
    same(&item, &parse_item(&bytes).unwrap());
    // Once email is set, the tag goes and the order says it.
    item.fields
        .insert("email".into(), "first@example.com".into());
    let o = RenderOptions {
        existing: Some(&bytes),
        ..opts()
    };
    let again = render_item(&item, &o).unwrap();
    assert!(!text(&again).contains("X-CRM-FIELD"), "{}", text(&again));
    same(&item, &parse_item(&again).unwrap());
}

#[test]
fn vcard_without_n_takes_names_from_fn() {
    let item = parse("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:x\r\nFN:Mary Ann Smith\r\nEND:VCARD\r\n");
    assert_eq!(item.fields["last_name"], "Smith");
    assert_eq!(item.fields["first_name"], "Mary Ann");
    assert!(item.problems[0].contains("FN"), "{:?}", item.problems);
}

// ------------------------------------------------------------- events

fn appointment() -> Record {
    record(
        EntitySet::Appointments,
        "scheduled",
        json!({
            "subject": "Quarterly review", "location": "Room 4, 2nd floor",
            "description": "Agenda:\n1. numbers\n2. plans",
            "start": "2026-11-25T09:00:00Z", "end": "2026-11-25T10:30:00Z",
            "time_zone": "Europe/Berlin", "organizer": "boss@example.com",
            "attendees": [
                {"email": "ann@example.com", "role": "required", "resolved": {"set": "contacts", "id": ID}},
                {"email": "bob@example.org", "role": "optional", "resolved": null}
            ],
            "regarding": {"set": "accounts", "id": ACCOUNT}
        }),
    )
}

fn appointment_item() -> MailboxItem {
    MailboxItem::from_records(&appointment(), &[], "ev-1@crmsync", true)
}

#[test]
fn r_f2_appointment_round_trip() {
    let item = appointment_item();
    let s = text(&render_item(&item, &opts()).unwrap());
    for want in [
        "DTSTART;TZID=Europe/Berlin:20261125T100000",
        "DTEND;TZID=Europe/Berlin:20261125T113000",
        "BEGIN:VTIMEZONE",
        "TZID:Europe/Berlin",
        "LOCATION:Room 4\\, 2nd floor",
        "X-CRM-ENTITY:appointments",
        "DTSTAMP:20261125T080000Z",
    ] {
        assert!(s.contains(want), "{want} missing in\n{s}");
    }
    assert!(!s.contains("STATUS"), "scheduled is not cancelled: {s}");
    same(&item, &round_trip(&item, &opts()));
    assert_eq!(
        item.status.crm_state(item.set, Some("scheduled")),
        "scheduled"
    );
}

#[test]
fn r_t6_attendees_get_schedule_agent_client() {
    let item = appointment_item();
    let s = text(&render_item(&item, &opts()).unwrap());
    let unfolded = s.replace("\r\n ", "");
    let people: Vec<&str> = unfolded
        .lines()
        .filter(|l| l.starts_with("ATTENDEE") || l.starts_with("ORGANIZER"))
        .collect();
    assert_eq!(people.len(), 3, "{s}");
    for l in &people {
        assert!(l.contains("SCHEDULE-AGENT=CLIENT"), "{l}");
    }
    assert!(unfolded.contains("ROLE=OPT-PARTICIPANT;SCHEDULE-AGENT=CLIENT:mailto:bob@example.org"));
    // Attendees the user's client wrote keep CN and PARTSTAT but lose
    // SCHEDULE-AGENT=SERVER.
    let existing = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:ev-1@crmsync\r\n\
DTSTAMP:20261101T000000Z\r\nDTSTART:20261125T090000Z\r\nDTEND:20261125T093000Z\r\nSUMMARY:x\r\n\
ATTENDEE;CN=Ann Lee;PARTSTAT=ACCEPTED;SCHEDULE-AGENT=SERVER:MAILTO:Ann@Example.com\r\n\
ATTENDEE;CN=Room;CUTYPE=ROOM:urn:uuid:room-4\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let o = RenderOptions {
        existing: Some(existing.as_bytes()),
        ..opts()
    };
    let s = text(&render_item(&item, &o).unwrap()).replace("\r\n ", "");
    let ann = s.lines().find(|l| l.contains("ann@example.com")).unwrap();
    assert!(
        ann.contains("CN=\"Ann Lee\"") && ann.contains("PARTSTAT=ACCEPTED"),
        "{ann}"
    );
    assert!(
        ann.contains("SCHEDULE-AGENT=CLIENT") && !ann.contains("SERVER"),
        "{ann}"
    );
    assert!(
        s.contains("urn:uuid:room-4"),
        "unmapped attendees stay: {s}"
    );
    same(&item, &parse(&s));
}

#[test]
fn tzid_berlin_converts_to_utc() {
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:b1\r\n\
DTSTART;TZID=Europe/Berlin:20261125T100000\r\nDTEND;TZID=Europe/Berlin:20261125T110000\r\n\
SUMMARY:Winter\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let item = parse(ics);
    assert_eq!(item.fields["start"], "2026-11-25T09:00:00Z");
    assert_eq!(item.fields["end"], "2026-11-25T10:00:00Z");
    assert_eq!(item.fields["time_zone"], "Europe/Berlin");
    assert!(item.problems.is_empty(), "{:?}", item.problems);
    let summer = parse(&ics.replace("20261125", "20260701"));
    assert_eq!(summer.fields["start"], "2026-07-01T08:00:00Z");
    // Outlook's Windows zone names and Mozilla's prefixed ones.
    let windows = parse(&ics.replace("Europe/Berlin", "W. Europe Standard Time"));
    assert_eq!(windows.fields["start"], "2026-11-25T09:00:00Z");
    let mozilla = parse(&ics.replace("Europe/Berlin", "/mozilla.org/20050126_1/Europe/Berlin"));
    assert_eq!(mozilla.fields["start"], "2026-11-25T09:00:00Z");
    assert_eq!(mozilla.fields["time_zone"], "Europe/Berlin");
}

#[test]
fn vtimezone_is_written_for_the_time_zone() {
    let item = appointment_item();
    let s = text(&render_item(&item, &opts()).unwrap());
    let vtz = &s[s.find("BEGIN:VTIMEZONE").unwrap()..s.find("END:VTIMEZONE").unwrap()];
    assert!(
        vtz.contains("TZOFFSETTO:+0100") && vtz.contains("TZOFFSETTO:+0200"),
        "{vtz}"
    );
    assert!(
        vtz.contains("RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10") || vtz.contains("BYMONTH=10"),
        "{vtz}"
    );
    assert!(s.find("BEGIN:VTIMEZONE") < s.find("BEGIN:VEVENT"), "{s}");
    // No time zone: UTC times, no VTIMEZONE.
    let mut utc = item.clone();
    utc.fields.remove("time_zone");
    let s = text(&render_item(&utc, &opts()).unwrap());
    assert!(
        s.contains("DTSTART:20261125T090000Z") && !s.contains("VTIMEZONE"),
        "{s}"
    );
}

#[test]
fn custom_vtimezone_rules_convert_unknown_tzids() {
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VTIMEZONE\r\nTZID:Customized Time Zone\r\n\
BEGIN:STANDARD\r\nDTSTART:16010101T030000\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\n\
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\n\
DTSTART:16010101T020000\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\n\
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n\
BEGIN:VEVENT\r\nUID:c1\r\nDTSTART;TZID=Customized Time Zone:20260701T100000\r\n\
DTEND;TZID=Customized Time Zone:20261125T100000\r\nSUMMARY:x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let item = parse(ics);
    assert_eq!(item.fields["start"], "2026-07-01T08:00:00Z");
    assert_eq!(item.fields["end"], "2026-11-25T09:00:00Z");
    assert!(!item.fields.contains_key("time_zone"));
    assert!(
        item.problems.iter().any(|p| p.contains("line 20: DTSTART")),
        "{:?}",
        item.problems
    );
    // A TZID defined nowhere: read as UTC, reported.
    let item = parse(&ics.replace("TZID:Customized Time Zone", "TZID:Other"));
    assert_eq!(item.fields["start"], "2026-07-01T10:00:00Z");
    assert!(
        item.problems.iter().any(|p| p.contains("read as UTC")),
        "{:?}",
        item.problems
    );
}

#[test]
fn all_day_events() {
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:a1\r\n\
DTSTART;VALUE=DATE:20261225\r\nDTEND;VALUE=DATE:20261227\r\nSUMMARY:Holidays\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";
    let item = parse(ics);
    assert_eq!(item.fields["all_day"], true);
    assert_eq!(item.fields["start"], "2026-12-25T00:00:00Z");
    assert_eq!(item.fields["end"], "2026-12-27T00:00:00Z");
    let s = text(&render_item(&item, &opts()).unwrap());
    assert!(
        s.contains("DTSTART;VALUE=DATE:20261225") && s.contains("DTEND;VALUE=DATE:20261227"),
        "{s}"
    );
    // No DTEND: one day.
    let one = parse(&ics.replace("DTEND;VALUE=DATE:20261227\r\n", ""));
    assert_eq!(one.fields["end"], "2026-12-26T00:00:00Z");

    // An all-day event in Berlin: days are Berlin days; the zone rides along.
    let rec = record(
        EntitySet::Appointments,
        "open",
        json!({"subject": "Offsite", "start": "2026-11-24T23:00:00Z",
               "end": "2026-11-25T23:00:00Z", "all_day": true, "time_zone": "Europe/Berlin"}),
    );
    let item = MailboxItem::from_records(&rec, &[], "a2", false);
    let s = text(&render_item(&item, &opts()).unwrap());
    assert!(
        s.contains("DTSTART;VALUE=DATE:20261125") && s.contains("DTEND;VALUE=DATE:20261126"),
        "{s}"
    );
    assert!(
        s.contains("X-CRM-TIME-ZONE:Europe/Berlin") && !s.contains("VTIMEZONE"),
        "{s}"
    );
    same(&item, &round_trip(&item, &opts()));
    // A time inside the day is the whole day in the mailbox's view.
    let projected = project_fields(
        EntitySet::Appointments,
        &fields(
            json!({"start": "2026-11-25T10:00:00Z", "end": "2026-11-25T12:00:00Z", "all_day": true}),
        ),
    );
    assert_eq!(projected["start"], "2026-11-25T00:00:00Z");
    assert_eq!(projected["end"], "2026-11-26T00:00:00Z");
}

#[test]
fn duration_instead_of_dtend_and_utc_zone() {
    let ics = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:d1\r\nDTSTART:20261125T100000Z\r\n\
DURATION:PT1H30M\r\nSUMMARY:x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let item = parse(ics);
    assert_eq!(item.fields["end"], "2026-11-25T11:30:00Z");
    // Unchanged, DURATION stays; changed, DTEND replaces it.
    let o = RenderOptions {
        existing: Some(ics.as_bytes()),
        ..opts()
    };
    assert!(text(&render_item(&item, &o).unwrap()).contains("DURATION:PT1H30M"));
    let mut later = item.clone();
    later
        .fields
        .insert("end".into(), "2026-11-25T12:00:00Z".into());
    let s = text(&render_item(&later, &o).unwrap());
    assert!(
        s.contains("DTEND:20261125T120000Z") && !s.contains("DURATION"),
        "{s}"
    );
    // A UTC time zone needs no VTIMEZONE.
    later.fields.insert("time_zone".into(), "UTC".into());
    let s = text(&render_item(&later, &opts()).unwrap());
    assert!(
        s.contains("DTSTART:20261125T100000Z") && s.contains("X-CRM-TIME-ZONE:UTC"),
        "{s}"
    );
    assert!(!s.contains("VTIMEZONE"), "{s}");
    same(&later, &parse(&s));
    let mut no_uid = later;
    no_uid.uid = " ".into();
    assert!(render_item(&no_uid, &opts())
        .unwrap_err()
        .to_string()
        .contains("no UID"));
}

#[test]
fn floating_times_are_read_as_utc_and_reported() {
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:f1\r\n\
DTSTART:20261125T100000\r\nDTEND:20261125T110000\r\nSUMMARY:Floating\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let item = parse(ics);
    assert_eq!(item.fields["start"], "2026-11-25T10:00:00Z");
    assert!(!item.fields.contains_key("time_zone"));
    assert!(
        item.problems
            .iter()
            .any(|p| p.contains("line 5: DTSTART") && p.contains("floating")),
        "{:?}",
        item.problems
    );
}

fn series() -> (Record, Vec<Record>) {
    let series = record(
        EntitySet::Appointments,
        "scheduled",
        json!({
            "subject": "Stand-up", "start": "2026-11-02T08:30:00Z", "end": "2026-11-02T08:45:00Z",
            "time_zone": "Europe/Berlin",
            "recurrence": {"rrule": "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=20",
                           "exdates": ["2026-11-11T08:30:00Z", "2026-11-04T08:30:00Z"]},
        }),
    );
    let mut moved = record(
        EntitySet::Appointments,
        "scheduled",
        json!({"subject": "Stand-up (moved)", "start": "2026-11-09T10:00:00Z",
               "end": "2026-11-09T10:15:00Z", "time_zone": "Europe/Berlin",
               "series_id": ID, "recurrence_id": "2026-11-09T08:30:00Z", "location": "Café"}),
    );
    moved.id = Uuid::from_u128(2);
    let mut cancelled = record(
        EntitySet::Appointments,
        "canceled",
        json!({"subject": "Stand-up", "start": "2026-11-16T08:30:00Z",
               "end": "2026-11-16T08:45:00Z", "time_zone": "Europe/Berlin",
               "series_id": ID, "recurrence_id": "2026-11-16T08:30:00Z"}),
    );
    cancelled.id = Uuid::from_u128(3);
    (series, vec![moved, cancelled])
}

#[test]
fn rrule_exdate_and_exceptions_round_trip() {
    let (s, ex) = series();
    let item = MailboxItem::from_records(&s, &ex, "series-1", true);
    assert_eq!(item.exceptions.len(), 2);
    let bytes = render_item(&item, &opts()).unwrap();
    let out = text(&bytes);
    for want in [
        "RRULE:FREQ=WEEKLY;BYDAY=MO,WE;COUNT=20",
        "EXDATE;TZID=Europe/Berlin:20261111T093000,20261104T093000",
        "RECURRENCE-ID;TZID=Europe/Berlin:20261109T093000",
        "RECURRENCE-ID;TZID=Europe/Berlin:20261116T093000",
        "STATUS:CANCELLED",
        "X-CRM-ID:00000000-0000-0000-0000-000000000002",
    ] {
        assert!(out.contains(want), "{want} missing in\n{out}");
    }
    assert_eq!(out.matches("UID:series-1").count(), 3, "{out}");
    assert_eq!(out.matches("BEGIN:VTIMEZONE").count(), 1, "{out}");
    let back = round_trip(&item, &opts());
    same(&item, &back);
    assert_eq!(back.exceptions[1].status, Status::Canceled);
    assert_eq!(
        back.exceptions[1]
            .status
            .crm_state(back.set, Some("scheduled")),
        "canceled"
    );

    // Re-rendered over itself nothing changes; an exception dropped in the
    // CRM goes, the others stay.
    let o = RenderOptions {
        existing: Some(&bytes),
        ..opts()
    };
    assert_eq!(text(&render_item(&item, &o).unwrap()), out);
    let mut fewer = item.clone();
    fewer.exceptions.pop();
    let s2 = text(&render_item(&fewer, &o).unwrap());
    assert_eq!(s2.matches("RECURRENCE-ID").count(), 1, "{s2}");
    same(&fewer, &parse(&s2));
}

#[test]
fn rrule_in_the_users_spelling_comes_back_as_written() {
    let ics = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:r1\r\nDTSTART:20261102T083000Z\r\n\
RRULE:INTERVAL=2;FREQ=WEEKLY;BYDAY=MO\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    assert_eq!(
        parse(ics).fields["recurrence"]["rrule"],
        "INTERVAL=2;FREQ=WEEKLY;BYDAY=MO"
    );
    // Lower case is valid iCalendar but not what the CRM keeps: canonical form.
    let lower = parse(&ics.replace("INTERVAL=2;FREQ=WEEKLY;BYDAY=MO", "freq=daily;count=3"));
    assert_eq!(lower.fields["recurrence"]["rrule"], "FREQ=DAILY;COUNT=3");
}

// ------------------------------------------------------------- to-dos

#[test]
fn r_f2_task_round_trip_and_priorities() {
    let rec = record(
        EntitySet::Phonecalls,
        "open",
        json!({"subject": "Call Ann", "description": "About the offer", "start": "2026-11-25T09:00:00Z",
               "due": "2026-11-26T17:00:00Z", "priority": "high", "percent_complete": 40,
               "regarding": {"set": "opportunities", "id": ID}, "phone_number": "+1 555",
               "direction": "outgoing"}),
    );
    let item = MailboxItem::from_records(&rec, &[], "call-1", true);
    assert!(
        !item.fields.contains_key("phone_number"),
        "no VTODO counterpart"
    );
    let s = text(&render_item(&item, &opts()).unwrap());
    for want in [
        "BEGIN:VTODO",
        "X-CRM-ENTITY:phonecalls",
        "PRIORITY:1",
        "PERCENT-COMPLETE:40",
        "DUE:20261126T170000Z",
        "STATUS:NEEDS-ACTION",
    ] {
        assert!(s.contains(want), "{want} missing in\n{s}");
    }
    same(&item, &round_trip(&item, &opts()));

    let base = "BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nUID:p\r\nSUMMARY:x\r\nPRIORITY:N\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";
    for (n, want) in [
        ("1", Some("high")),
        ("4", Some("high")),
        ("5", Some("normal")),
        ("6", Some("low")),
        ("9", Some("low")),
        ("0", None),
    ] {
        let item = parse(&base.replace("PRIORITY:N", &format!("PRIORITY:{n}")));
        assert_eq!(
            item.fields.get("priority").and_then(Value::as_str),
            want,
            "{n}"
        );
    }
    assert_eq!(
        parse(base.replace("PRIORITY:N\r\n", "").as_str()).set,
        EntitySet::Tasks
    );
}

#[test]
fn todo_and_event_status_map_to_states() {
    let todo = |status: &str| {
        parse(&format!(
            "BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nUID:s\r\nSUMMARY:x\r\n{status}END:VTODO\r\nEND:VCALENDAR\r\n"
        ))
        .status
    };
    assert_eq!(todo("STATUS:COMPLETED\r\n"), Status::Completed);
    assert_eq!(todo("STATUS:CANCELLED\r\n"), Status::Canceled);
    assert_eq!(todo("STATUS:IN-PROCESS\r\n"), Status::Active);
    assert_eq!(todo("COMPLETED:20261125T100000Z\r\n"), Status::Completed);
    assert_eq!(todo(""), Status::Active);
    let set = EntitySet::Tasks;
    assert_eq!(Status::Completed.crm_state(set, Some("open")), "completed");
    assert_eq!(Status::Active.crm_state(set, Some("completed")), "open");
    assert_eq!(Status::Active.crm_state(set, None), "open");
    let ev = EntitySet::Appointments;
    assert_eq!(Status::from_crm_state(ev, "completed"), Status::Active);
    assert_eq!(Status::Active.crm_state(ev, Some("completed")), "completed");
    assert_eq!(Status::Active.crm_state(ev, Some("canceled")), "open");
    assert_eq!(
        Status::Canceled.crm_state(ev, Some("scheduled")),
        "canceled"
    );

    // Completing writes COMPLETED; reopening removes it.
    let mut item = MailboxItem::new(EntitySet::Tasks, "s");
    item.fields.insert("subject".into(), "x".into());
    item.status = Status::Completed;
    let done = render_item(&item, &opts()).unwrap();
    assert!(
        text(&done).contains("COMPLETED:20261125T080000Z"),
        "{}",
        text(&done)
    );
    item.status = Status::Active;
    let o = RenderOptions {
        existing: Some(&done),
        ..opts()
    };
    let open = text(&render_item(&item, &o).unwrap());
    assert!(
        open.contains("STATUS:NEEDS-ACTION") && !open.contains("COMPLETED"),
        "{open}"
    );
}

#[test]
fn existing_event_keeps_alarms_and_unmapped_properties() {
    let existing =
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Microsoft Corporation//Outlook 16.0//EN\r\n\
METHOD:REQUEST\r\nX-WR-CALNAME:Work\r\nBEGIN:VTIMEZONE\r\nTZID:W. Europe Standard Time\r\n\
BEGIN:STANDARD\r\nDTSTART:16011028T030000\r\nRRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10\r\n\
TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\n\
DTSTART:16010325T020000\r\nRRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3\r\nTZOFFSETFROM:+0100\r\n\
TZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\nBEGIN:VEVENT\r\nUID:ev-1@crmsync\r\n\
DTSTAMP:20261101T000000Z\r\nSUMMARY;LANGUAGE=en-GB:Quarterly review\r\n\
DTSTART;TZID=W. Europe Standard Time:20261125T100000\r\n\
DTEND;TZID=W. Europe Standard Time:20261125T113000\r\nDESCRIPTION:old text\r\n\
X-ALT-DESC;FMTTYPE=text/html:<p>old text</p>\r\nX-MICROSOFT-CDO-BUSYSTATUS:BUSY\r\n\
ATTACH:https://files.example/agenda.pdf\r\nSEQUENCE:3\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\n\
TRIGGER:-PT15M\r\nDESCRIPTION:Reminder\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let item = appointment_item();
    let o = RenderOptions {
        existing: Some(existing.as_bytes()),
        ..opts()
    };
    let s = text(&render_item(&item, &o).unwrap());
    for kept in [
        "X-WR-CALNAME:Work",
        "SUMMARY;LANGUAGE=en-GB:Quarterly review",
        // calcard quotes parameter values with spaces (RFC 5545 allows both).
        "DTSTART;TZID=\"W. Europe Standard Time\":20261125T100000",
        "TZID:W. Europe Standard Time",
        "X-MICROSOFT-CDO-BUSYSTATUS:BUSY",
        "ATTACH:https://files.example/agenda.pdf",
        "SEQUENCE:3",
        "BEGIN:VALARM",
        "TRIGGER:-PT15M",
        "DESCRIPTION:Reminder",
    ] {
        assert!(s.contains(kept), "{kept} missing in\n{s}");
    }
    assert!(
        !s.contains("METHOD") && !s.contains("X-ALT-DESC") && !s.contains("Outlook"),
        "{s}"
    );
    assert!(
        s.contains("DESCRIPTION:Agenda:\\n1. numbers\\n2. plans"),
        "{s}"
    );
    assert_eq!(s.matches("BEGIN:VTIMEZONE").count(), 1, "{s}");
    same(&item, &parse(&s));
}

#[test]
fn render_refuses_sets_without_items_and_wrong_existing_kinds() {
    let email = MailboxItem::new(EntitySet::Emails, "m");
    assert!(render_item(&email, &opts())
        .unwrap_err()
        .to_string()
        .contains("messages"));
    let todo = render_item(&MailboxItem::new(EntitySet::Tasks, "t"), &opts()).unwrap();
    let o = RenderOptions {
        existing: Some(&todo),
        ..opts()
    };
    let err = render_item(&appointment_item(), &o).unwrap_err();
    assert!(err.to_string().contains("VTODO"), "{err}");
    let o = RenderOptions {
        existing: Some(b"garbage"),
        ..opts()
    };
    let err = render_item(&appointment_item(), &o).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("line 1: the existing item cannot be read"),
        "{err}"
    );
}

// ------------------------------------------------------------- malformed input

#[test]
fn malformed_items_give_clear_errors() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "the item is empty"),
        (b"\r\n\r\n", "the item is empty"),
        (b"hello world", "line 1: expected BEGIN:VCARD or BEGIN:VCALENDAR, found 'hello world'"),
        (b"\x00\xff\xfe garbage \x89PNG", "line 1: expected BEGIN:VCARD"),
        (
            b"BEGIN:VCARD\r\nVERSION:4.0\r\nUID:x\r\nFN:A\r\n",
            "line 5: BEGIN:VCARD of line 1 has no END:VCARD",
        ),
        (
            b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nEND:VTODO\r\nEND:VCALENDAR\r\n",
            "line 4: END:VTODO does not close BEGIN:VEVENT of line 2",
        ),
        (
            b"BEGIN:VCARD\r\nUID:a\r\nEND:VCARD\r\nBEGIN:VCARD\r\nUID:b\r\nEND:VCARD\r\n",
            "line 4: content after the END of the item",
        ),
        (
            b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:No Uid\r\nEND:VCARD\r\n",
            "line 1: the vCard has no UID",
        ),
        (
            b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            "line 2: the VEVENT has no UID",
        ),
        (
            b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n",
            "holds no VEVENT or VTODO",
        ),
        (
            b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nEND:VEVENT\r\nBEGIN:VTODO\r\nUID:a\r\nEND:VTODO\r\nEND:VCALENDAR\r\n",
            "both VEVENT and VTODO",
        ),
        (
            b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:b\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            "line 5: a second VEVENT without RECURRENCE-ID",
        ),
        (
            b"BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nUID:a\r\nRECURRENCE-ID:20261125T100000Z\r\nEND:VTODO\r\nEND:VCALENDAR\r\n",
            "line 2: only instances (RECURRENCE-ID) of a repeating VTODO",
        ),
    ];
    for (input, want) in cases {
        let err = parse_item(input).unwrap_err().to_string();
        assert!(
            err.starts_with(want) || err.contains(want),
            "{want:?} vs {err:?}"
        );
    }
    let deep = format!("BEGIN:VCALENDAR\r\n{}", "BEGIN:X\r\n".repeat(40));
    assert!(parse_item(deep.as_bytes())
        .unwrap_err()
        .to_string()
        .contains("nested"));
    let huge = vec![b'A'; MAX_ITEM_BYTES + 1];
    let err = parse_item(&huge).unwrap_err().to_string();
    assert!(err.contains("items over 20 MiB are not read"), "{err}");
}

#[test]
fn large_but_allowed_items_are_read_and_long_texts_cut() {
    let long = "x".repeat(2_000_000);
    let ics = format!(
        "BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nUID:l\r\nSUMMARY:{}\r\nDESCRIPTION:{long}\r\nEND:VTODO\r\nEND:VCALENDAR\r\n",
        "s".repeat(1500)
    );
    let item = parse(&ics);
    assert_eq!(item.fields["subject"].as_str().unwrap().len(), 1000);
    assert_eq!(
        item.fields["description"].as_str().unwrap().len(),
        1_000_000
    );
    assert_eq!(item.problems.len(), 2, "{:?}", item.problems);
}

#[test]
fn vcard_2_1_quoted_printable_is_read() {
    let card = "BEGIN:VCARD\r\nVERSION:2.1\r\nUID:q1\r\nN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:M=C3=BCller;Anna\r\n\
TEL;WORK;VOICE:+49 30 1\r\nTEL;CELL:+49 170 2\r\n\
NOTE;ENCODING=QUOTED-PRINTABLE:first line=0D=0Asecond line\r\nEND:VCARD\r\n";
    let item = parse(card);
    assert_eq!(item.fields["last_name"], "Müller");
    assert_eq!(item.fields["phone"], "+49 30 1");
    assert_eq!(item.fields["mobile"], "+49 170 2");
    assert_eq!(item.fields["notes"], "first line\r\nsecond line");
}

#[test]
fn latin1_vcards_are_read() {
    let mut card =
        b"BEGIN:VCARD\r\nVERSION:2.1\r\nUID:l1\r\nN:M\xfcller;J\xfcrgen\r\nEND:VCARD\r\n".to_vec();
    let item = parse_item(&card).unwrap();
    assert_eq!(item.fields["last_name"], "Müller");
    assert!(item.problems[0].contains("Latin-1"));
    card.truncate(card.len() - 11);
    assert!(parse_item(&card).is_err());
}

#[test]
fn bad_values_are_left_out_and_reported() {
    let ics = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:b\r\nDTSTART:20261125T100000Z\r\n\
DTEND:20261125T090000Z\r\nORGANIZER:mailto:not an address\r\nATTENDEE:mailto:ok@example.com\r\n\
ATTENDEE;X-CRM-RESOLVED=\"widgets:1\":mailto:two@example.com\r\nATTENDEE:mailto:\r\n\
X-CRM-REGARDING;X-CRM-SET=tasks:1b4e28ba-2fa1-11d2-883f-0016d3cca427\r\n\
X-CRM-ENTITY:faxes\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let item = parse(ics);
    assert_eq!(item.set, EntitySet::Appointments);
    assert!(!item.fields.contains_key("organizer"));
    assert!(!item.fields.contains_key("regarding"));
    assert_eq!(item.fields["attendees"].as_array().unwrap().len(), 2);
    assert_eq!(item.fields["attendees"][1]["resolved"], Value::Null);
    let all = item.problems.join("\n");
    for want in [
        "ends before it starts",
        "organizer",
        "X-CRM-RESOLVED",
        "regarding",
        "X-CRM-ENTITY",
        "without a usable",
    ] {
        assert!(all.contains(want), "{want} missing in {all}");
    }
}

// ------------------------------------------------------------- properties

fn text_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\u{0}]{0,24}",
        "[a-zA-Z0-9 ,;:\\\\\"'\\n\\t.-]{0,24}",
        Just(String::new()),
    ]
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text_strategy())
}

fn email_strategy() -> impl Strategy<Value = String> {
    "[a-z0-9._%+-]{1,10}@[a-z0-9-]{1,10}\\.[a-z]{2,4}"
}

fn datetime_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        // 1971 .. 2099
        9 => 31_536_000i64..4_102_444_800i64,
        // and now and then anything RFC 3339 allows: 0001 .. 9999
        1 => -62_135_596_800i64..253_402_300_000i64,
    ]
}

fn fmt(ts: i64) -> String {
    let ts = ts.min(253_402_300_799);
    icalendar::fmt_utc(chrono::DateTime::from_timestamp(ts, 0).unwrap().naive_utc())
}

fn zone_strategy() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop::sample::select(vec![
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "America/Sao_Paulo",
        "UTC",
        "Etc/GMT+5",
        "Mars/Olympus_Mons",
    ]))
    .prop_map(|z| z.map(str::to_string))
}

fn regarding_strategy() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(
        (prop::sample::select(REGARDING_SETS.to_vec()), any::<u128>())
            .prop_map(|(set, id)| json!({"set": set, "id": Uuid::from_u128(id)})),
    )
}

fn put(m: &mut Map<String, Value>, name: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        m.insert(name.into(), v.into());
    }
}

prop_compose! {
    fn contact_fields()(
        first in opt_text(), last in text_strategy(), email in proptest::option::of(email_strategy()),
        email2 in proptest::option::of(email_strategy()), phone in opt_text(), mobile in opt_text(),
        title in opt_text(), street in opt_text(), city in opt_text(), postal in opt_text(),
        country in opt_text(), birthday in proptest::option::of((1900i32..2030, 1u8..13, 1u8..29)),
        notes in opt_text(),
    ) -> Map<String, Value> {
        let mut m = Map::new();
        put(&mut m, "first_name", first);
        m.insert("last_name".into(), last.into());
        put(&mut m, "email", email);
        put(&mut m, "email2", email2);
        put(&mut m, "phone", phone);
        put(&mut m, "mobile", mobile);
        put(&mut m, "job_title", title);
        put(&mut m, "street", street);
        put(&mut m, "city", city);
        put(&mut m, "postal_code", postal);
        put(&mut m, "country", country);
        put(&mut m, "birthday", birthday.map(|(y, mo, d)| format!("{y:04}-{mo:02}-{d:02}")));
        put(&mut m, "notes", notes);
        m
    }
}

prop_compose! {
    fn attendee()(email in email_strategy(), optional in any::<bool>(), resolved in proptest::option::of(any::<u128>())) -> Value {
        json!({"email": email, "role": if optional {"optional"} else {"required"},
               "resolved": resolved.map(|id| json!({"set": "contacts", "id": Uuid::from_u128(id)}))})
    }
}

prop_compose! {
    fn event_fields()(
        subject in text_strategy(), location in opt_text(), description in opt_text(),
        start in datetime_strategy(), minutes in 0i64..3000, all_day in any::<bool>(),
        zone in zone_strategy(), organizer in proptest::option::of(email_strategy()),
        attendees in prop::collection::vec(attendee(), 0..4),
        rrule in proptest::option::of(prop::sample::select(vec![
            "FREQ=WEEKLY;BYDAY=MO,WE", "FREQ=DAILY;COUNT=5", "INTERVAL=2;FREQ=WEEKLY",
            "FREQ=MONTHLY;BYMONTHDAY=1;INTERVAL=2", "FREQ=YEARLY;UNTIL=20991231T000000Z",
            "FREQ=WEEKLY;WKST=SU;BYDAY=TU,TH",
        ])),
        exdates in prop::collection::vec(datetime_strategy(), 0..4),
        regarding in regarding_strategy(),
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("subject".into(), subject.into());
        put(&mut m, "location", location);
        put(&mut m, "description", description);
        m.insert("start".into(), fmt(start).into());
        m.insert("end".into(), fmt(start + minutes * 60).into());
        m.insert("all_day".into(), all_day.into());
        put(&mut m, "time_zone", zone);
        put(&mut m, "organizer", organizer);
        m.insert("attendees".into(), attendees.into());
        put(&mut m, "recurrence", rrule.map(|r| json!({"rrule": r, "exdates": exdates.iter().map(|t| fmt(*t)).collect::<Vec<_>>()})));
        put(&mut m, "regarding", regarding);
        m
    }
}

prop_compose! {
    fn todo_fields()(
        subject in text_strategy(), description in opt_text(),
        start in proptest::option::of(datetime_strategy()), due in proptest::option::of(datetime_strategy()),
        after in 0i64..10_000_000,
        priority in proptest::option::of(prop::sample::select(vec!["low", "normal", "high"])),
        percent in proptest::option::of(0i64..=100), regarding in regarding_strategy(),
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("subject".into(), subject.into());
        put(&mut m, "description", description);
        put(&mut m, "start", start.map(fmt));
        // A valid record is not due before it starts.
        put(&mut m, "due", due.map(|d| fmt(start.map_or(d, |s| s + after))));
        put(&mut m, "priority", priority);
        put(&mut m, "percent_complete", percent);
        put(&mut m, "regarding", regarding);
        m
    }
}

// Boxed: the nested strategies' value trees are too large for a test
// thread's stack in debug builds otherwise.
fn any_item() -> BoxedStrategy<MailboxItem> {
    let contact = contact_fields()
        .boxed()
        .prop_map(|f| (EntitySet::Contacts, f, vec![]))
        .boxed();
    let event = (
        prop::sample::select(vec![
            EntitySet::Appointments,
            EntitySet::Serviceappointments,
        ]),
        event_fields().boxed(),
        prop::collection::vec((event_fields().boxed(), datetime_strategy()), 0..3).boxed(),
    )
        .prop_map(|(set, f, ex)| (set, f, ex))
        .boxed();
    let todo = (
        prop::sample::select(vec![
            EntitySet::Tasks,
            EntitySet::Phonecalls,
            EntitySet::Letters,
            EntitySet::Faxes,
        ]),
        todo_fields().boxed(),
    )
        .prop_map(|(set, f)| (set, f, vec![]))
        .boxed();
    (
        prop_oneof![contact, event, todo],
        any::<bool>(),
        any::<u128>(),
        any::<u8>(),
        "[A-Za-z0-9@._-]{1,30}",
    )
        .prop_map(|((set, f, ex), tracked, id, state, uid)| {
            let states = set.states();
            let mut rec = record(set, states[state as usize % states.len()], Value::Object(f));
            rec.id = Uuid::from_u128(id);
            let exceptions: Vec<Record> = ex
                .into_iter()
                .enumerate()
                .map(|(i, (mut f, rid))| {
                    f.remove("recurrence");
                    f.insert("recurrence_id".into(), fmt(rid).into());
                    let mut r = record(
                        set,
                        states[(state as usize + i) % states.len()],
                        Value::Object(f),
                    );
                    r.id = Uuid::from_u128(id.wrapping_add(i as u128 + 1));
                    r
                })
                .collect();
            let mut item = MailboxItem::from_records(&rec, &exceptions, uid, tracked);
            // One exception per instance.
            let mut seen = std::collections::BTreeSet::new();
            item.exceptions
                .retain(|e| seen.insert(e.recurrence_id.clone()));
            if !item.fields.contains_key("recurrence") {
                item.exceptions.clear();
            }
            item
        })
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// R-F2: CRM → mailbox → CRM changes nothing, for every mapped set.
    #[test]
    fn r_f2_round_trip_changes_nothing(item in any_item(), v3 in any::<bool>()) {
        let o = RenderOptions { vcard_version: if v3 { VcardVersion::V3 } else { VcardVersion::V4 }, ..opts() };
        let bytes = render_item(&item, &o).unwrap();
        let back = parse_item(&bytes).map_err(|e| TestCaseError::fail(format!("{e}\n{}", text(&bytes))))?;
        prop_assert!(back.problems.is_empty(), "{:?}\n{}", back.problems, text(&bytes));
        prop_assert_eq!(&item, &back, "{}", text(&bytes));
        // The projection is what the mailbox holds: projecting again changes nothing.
        prop_assert_eq!(project_fields(item.set, &item.fields), item.fields.clone());
    }

    /// Rendering B over the mailbox's copy of A gives B, and re-rendering
    /// over itself changes no byte.
    #[test]
    fn r_f2_updates_over_an_existing_item(a in any_item(), b in any_item()) {
        let first = render_item(&a, &opts()).unwrap();
        let again = render_item(&a, &RenderOptions { existing: Some(&first), ..opts() }).unwrap();
        prop_assert_eq!(text(&first), text(&again));
        if ItemKind::for_set(a.set) == ItemKind::for_set(b.set) {
            let mut b = b;
            b.uid = a.uid.clone();
            let bytes = render_item(&b, &RenderOptions { existing: Some(&first), ..opts() }).unwrap();
            let back = parse_item(&bytes).map_err(|e| TestCaseError::fail(format!("{e}\n{}", text(&bytes))))?;
            prop_assert!(back.problems.is_empty(), "{:?}\n{}", back.problems, text(&bytes));
            prop_assert_eq!(&b, &back, "{}", text(&bytes));
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = parse_item(&bytes);
        let mut with_header = b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n".to_vec();
        with_header.extend(&bytes);
        let _ = parse_item(&with_header);
        let mut card = b"BEGIN:VCARD\r\n".to_vec();
        card.extend(&bytes);
        let _ = parse_item(&card);
    }

    #[test]
    fn parse_and_render_never_panic_on_mutated_items(
        item in any_item(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..40, prop::collection::vec(any::<u8>(), 0..12)), 1..6),
        line_ops in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..4),
    ) {
        let mut bytes = render_item(&item, &opts()).unwrap();
        // Swap and duplicate whole lines, then splice random bytes in.
        let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        for (a, b) in line_ops {
            let (i, j) = (a.index(lines.len()), b.index(lines.len()));
            if i % 2 == 0 { lines.swap(i, j) } else { let l = lines[i].clone(); lines.insert(j, l) }
        }
        bytes = lines.join(&b'\n');
        for (at, len, insert) in edits {
            let at = at.index(bytes.len() + 1);
            let end = (at + len).min(bytes.len());
            bytes.splice(at..end, insert);
        }
        if let Ok(parsed) = parse_item(&bytes) {
            // Whatever is read is a valid CRM value of a mailbox field.
            for (name, value) in &parsed.fields {
                let def = parsed.set.field(name).unwrap();
                prop_assert!(def.mailbox, "{}", name);
                prop_assert_eq!(def.normalize(value), Ok(value.clone()), "{}", name);
            }
            let _ = render_item(&parsed, &opts());
        }
        let _ = render_item(&item, &RenderOptions { existing: Some(&bytes), ..opts() });
    }
}

#[test]
fn extreme_values_do_not_panic() {
    let ics = "BEGIN:VCALENDAR\r\nBEGIN:VTIMEZONE\r\nTZID:Odd\r\nBEGIN:STANDARD\r\n\
DTSTART:99991231T235959\r\nTZOFFSETFROM:+9959\r\nTZOFFSETTO:-9959\r\n\
RRULE:FREQ=YEARLY;BYDAY=-9SU;BYMONTH=13\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n\
BEGIN:VEVENT\r\nUID:e\r\nDTSTART;TZID=Odd:99991231T235959\r\nDURATION:P4294967295W4294967295DT4294967295H\r\n\
RECURRENCE-ID;VALUE=DATE:00000000\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:e\r\n\
DTSTART;VALUE=DATE:99991231\r\nDURATION:P4294967295W\r\nRRULE:FREQ=DAILY;COUNT=99999999999999999999\r\n\
EXDATE:99991231T235960Z,20261340T000000Z\r\nDTEND:00010101T000000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let item = parse(ics);
    let _ = render_item(&item, &opts());
    let o = RenderOptions {
        existing: Some(ics.as_bytes()),
        ..opts()
    };
    let _ = render_item(&item, &o);
    let mut far = appointment_item();
    far.fields
        .insert("start".into(), "9999-12-31T23:00:00Z".into());
    far.fields
        .insert("end".into(), "9999-12-31T23:59:59Z".into());
    let out = render_item(&far, &opts()).unwrap();
    let back = parse_item(&out).unwrap();
    assert!(
        back.fields.contains_key("start"),
        "{:?} {}",
        back.problems,
        text(&out)
    );
    assert_eq!(back.fields["start"], "9999-12-31T23:00:00Z");
}

// ------------------------------------------------------------- R-F7

/// Renders `item` over `existing` (the CRM's answer written back).
fn over(item: &MailboxItem, existing: &str) -> String {
    let mut o = opts();
    o.existing = Some(existing.as_bytes());
    text(&render_item(item, &o).unwrap())
}

#[test]
fn r_f7_vevent_without_summary_tracked_as_no_subject() {
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:e1\r\n\
DTSTAMP:20261101T000000Z\r\nDTSTART:20261202T090000Z\r\nCATEGORIES:Tracked to CRM\r\n\
BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT15M\r\nDESCRIPTION:x\r\nEND:VALARM\r\n\
END:VEVENT\r\nBEGIN:VJOURNAL\r\nUID:j1\r\nDTSTAMP:20261101T000000Z\r\nEND:VJOURNAL\r\nEND:VCALENDAR\r\n";
    let item = parse(ics);
    assert_eq!(item.fields["subject"], NO_SUBJECT);
    // No DTEND or DURATION: it ends at its start.
    assert_eq!(item.fields["end"], "2026-12-02T09:00:00Z");
    let mut linked = item.clone();
    linked.crm_id = Some(Uuid::parse_str(ID).unwrap());
    let out = over(&linked, ics);
    assert!(!out.contains("SUMMARY"), "{out}");
    assert!(!out.contains("DTEND"), "{out}");
    assert!(
        out.contains("BEGIN:VALARM") && out.contains("BEGIN:VJOURNAL"),
        "{out}"
    );
    // Changed in the CRM, the subject is written.
    linked.fields.insert("subject".into(), "Review".into());
    assert!(over(&linked, ics).contains("SUMMARY:Review"));
}

#[test]
fn r_f7_date_valued_vevent_without_end_lasts_one_day() {
    let item = parse(
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:e2\r\nDTSTART;VALUE=DATE:20261224\r\n\
SUMMARY:Holiday\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    );
    assert_eq!(item.fields["all_day"], true);
    assert_eq!(item.fields["start"], "2026-12-24T00:00:00Z");
    assert_eq!(item.fields["end"], "2026-12-25T00:00:00Z");
}

#[test]
fn r_f7_vtodo_without_due_or_start_has_no_due_date() {
    let item = parse("BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nUID:t1\r\nEND:VTODO\r\nEND:VCALENDAR\r\n");
    assert_eq!(item.set, EntitySet::Tasks);
    assert_eq!(item.fields, fields(json!({"subject": NO_SUBJECT})));
}

#[test]
fn r_f7_vevent_without_start_cannot_be_read() {
    let err = parse_item(
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:e3\r\nSUMMARY:x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("no readable DTSTART"), "{err}");
}

#[test]
fn r_f7_vcard_with_only_email_is_a_contact_named_by_it() {
    let vcf = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c1\r\nEMAIL:ann@example.com\r\nEND:VCARD\r\n";
    let item = parse(vcf);
    assert_eq!(
        item.fields,
        fields(json!({"last_name": "ann@example.com", "email": "ann@example.com"}))
    );
    // Neither N nor FN is written back unless the name changes in the CRM.
    let out = over(&item, vcf);
    assert!(!out.contains("\nN:") && !out.contains("FN:"), "{out}");
    let mut renamed = item.clone();
    renamed.fields.insert("last_name".into(), "Lee".into());
    let out = over(&renamed, vcf);
    assert!(out.contains("N:Lee;") && out.contains("FN:Lee"), "{out}");
}

#[test]
fn r_f7_vcard_with_only_n_is_a_contact() {
    let item = parse("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c2\r\nN:Lee;Ann;;;\r\nEND:VCARD\r\n");
    assert_eq!(
        item.fields,
        fields(json!({"last_name": "Lee", "first_name": "Ann"}))
    );
    // A given name alone names the contact.
    let item = parse("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:c3\r\nN:;Madonna;;;\r\nEND:VCARD\r\n");
    assert_eq!(item.fields, fields(json!({"last_name": "Madonna"})));
}

#[test]
fn r_f7_vcard_without_fn_or_n_is_named_from_org_then_email() {
    let item = parse(
        "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:c4\r\nORG:Acme Inc.;Sales\r\nEMAIL:info@acme.example\r\nEND:VCARD\r\n",
    );
    assert_eq!(item.fields["last_name"], "Acme Inc.");
    let item = parse("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:c5\r\nNOTE:hi\r\nEND:VCARD\r\n");
    assert_eq!(item.fields["last_name"], NO_NAME);
}

// ------------------------------------------------------------- R-E2

#[test]
fn r_e2_instance_only_item_is_read_as_its_instances() {
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:inv\r\n\
RECURRENCE-ID:20261125T100000Z\r\nDTSTART:20261125T110000Z\r\nDTEND:20261125T120000Z\r\n\
SUMMARY:Planning\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:inv\r\nRECURRENCE-ID:20261202T100000Z\r\n\
DTSTART:20261202T100000Z\r\nDTEND:20261202T110000Z\r\nSUMMARY:Planning\r\nSTATUS:CANCELLED\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";
    let item = parse(ics);
    assert_eq!(item.set, EntitySet::Appointments);
    assert_eq!(item.fields["start"], "2026-11-25T11:00:00Z");
    assert!(!item.fields.contains_key("recurrence"));
    assert_eq!(item.exceptions.len(), 1);
    assert_eq!(item.exceptions[0].recurrence_id, "2026-12-02T10:00:00Z");
    assert_eq!(item.exceptions[0].status, Status::Canceled);
    // Written back (linked), each instance keeps its RECURRENCE-ID.
    let mut linked = item.clone();
    linked.crm_id = Some(Uuid::parse_str(ID).unwrap());
    let out = over(&linked, ics);
    assert_eq!(out.matches("RECURRENCE-ID").count(), 2, "{out}");
    assert!(!out.contains("RRULE"), "{out}");
    let again = parse(&out);
    assert_eq!(
        (again.fields, again.exceptions),
        (item.fields, item.exceptions)
    );
}
