"""Fill the sample databases with realistic demo rows, so every runbook has data to count, copy and check.

``fill`` looks at what the database holds *now* (which of the sample tables exist and which of their
columns) and fills only that, so it works at the head of both migration sets and at intermediate revisions:
before ``b7e4f0c2d913`` users get no ``full_name`` (the backfill revision computes it), before ``004``
customers get no ``station_id``, without the ai set there are no AI requests. Rows are appended: ids
continue after the largest existing id, and reference data (stations, roles, AI models and routes) is only
inserted into an empty table and reused otherwise.

The rows depend only on the seed, the scale and the database's revision. They are written with COPY in one
transaction; at scale 1 that is about 160,000 rows in a few seconds.

Usage::

    python migrations/demo_data.py postgresql://user@host:5432/dbname [--scale 2] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg

__all__ = ["fill"]

_BASE_TIME = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)

_FIRST_NAMES = (
    "Aiko Alejandro Amara Ana Andrei Anika Arjun Ava Beatriz Ben Camila Carlos Chen Chloe Daniel Daria Diego "
    "Elena Emeka Emma Ethan Fatima Felix Freya Gabriel Hana Hiroshi Ibrahim Ines Isla Ivan Jack Jamal Jana "
    "Javier Jin Julia Kai Kenji Lars Layla Leo Liam Lucia Luis Maya Mateo Mei Mia Mohammed Nadia Naomi "
    "Nikhil Noah Nora Olga Omar Oscar Paulo Priya Rafael Ravi Rosa Sakura Samir Sara Sofia Tariq Theo Tomas "
    "Valentina Vera Wei Yara Yusuf Zara Zoe"
).split()
_LAST_NAMES = (
    "Abe Adeyemi Alvarez Andersson Bauer Becker Brown Chen Costa Cruz Dubois Eriksen Fernandes Fischer "
    "Garcia Gonzalez Gupta Hansen Hernandez Ito Ivanova Jensen Johnson Kato Khan Kim Kowalski Kumar "
    "Larsen Lee Lopez Martin Meyer Miller Moreau Mueller Nakamura Nguyen Novak Okafor Olsen Park Patel "
    "Pereira Petrov Ramirez Reyes Rossi Sato Schmidt Silva Singh Smith Suzuki Tanaka Taylor Torres "
    "Vargas Wagner Wang Weber Williams Wilson Yamamoto Young Zhang"
).split()
_DOMAINS = ("example.com", "example.net", "example.org", "mail.example", "inbox.example")
_CITIES = (
    ("SFO", "San Francisco", "America/Los_Angeles"), ("LAX", "Los Angeles", "America/Los_Angeles"),
    ("SEA", "Seattle", "America/Los_Angeles"), ("DEN", "Denver", "America/Denver"),
    ("AUS", "Austin", "America/Chicago"), ("CHI", "Chicago", "America/Chicago"),
    ("ATL", "Atlanta", "America/New_York"), ("MIA", "Miami", "America/New_York"),
    ("NYC", "New York", "America/New_York"), ("BOS", "Boston", "America/New_York"),
    ("TOR", "Toronto", "America/Toronto"), ("LON", "London", "Europe/London"),
)
_ROLES = (
    ("super_admin", "All stations, all permissions"), ("station_admin", "Manages one station"),
    ("station_manager", "Schedules staff and bookings"), ("chef", "Cooks and sees own bookings"),
    ("customer_support", "Answers customers, sees CRM"), ("analyst", "Reads reports only"),
)
_LEAD_SOURCES = ("website", "instagram", "facebook", "referral", "google_ads", "yelp", "event")
_CONTACT_KINDS = ("email", "phone", "visit", "sms")
_CONTACT_NOTES = (
    "Asked about availability for a birthday party", "Requested a quote for 20 guests",
    "Follow-up after the event, very happy", "Wants vegetarian options", "Rescheduled to next month",
    "Complained about late arrival", "Booked a second event", "Asked for a corporate invoice", None,
)
_PAYMENT_DESCRIPTIONS = ("Deposit", "Event balance", "Gift card", "Add-on: extra protein", "Travel fee", None)
_REFUND_REASONS = ("requested_by_customer", "duplicate", "event_cancelled", "weather", None)
_PLATFORMS = ("instagram", "facebook", "tiktok", "x", "youtube")
_POST_TEMPLATES = (
    "Tonight's show in {city} was on fire! #hibachi", "Thank you {name} for the amazing review!",
    "New menu item: garlic butter lobster. Book now.", "Behind the scenes with our chefs in {city}",
    "Weekend slots are filling up fast in {city}", "Happy birthday {name}! 🎂",
)
_CAMPAIGN_SUBJECTS = (
    "Spring specials are here", "Book your summer party", "Back to school: family nights",
    "Holiday parties: reserve early", "New year, new menu", "Valentine's dinner for two",
)
_AI_MODELS = (
    # provider, name, context window, input and output cost per million tokens, chat
    ("openai", "gpt-4o", 128_000, "2.5000", "10.0000", True),
    ("openai", "gpt-4o-mini", 128_000, "0.1500", "0.6000", True),
    ("anthropic", "claude-sonnet", 200_000, "3.0000", "15.0000", True),
    ("anthropic", "claude-haiku", 200_000, "0.8000", "4.0000", True),
    ("google", "gemini-flash", 1_000_000, "0.1000", "0.4000", True),
    ("mistral", "mistral-small", 32_000, "0.2000", "0.6000", False),
    ("local", "llama-8b-instruct", 8_192, "0.0000", "0.0000", False),
    ("openai", "text-embedding-3-small", 8_192, "0.0200", "0.0000", False),
)
_AI_ROUTES = (  # name, model index, fallback model index, priority
    ("chat.default", 1, 3, 100), ("chat.premium", 0, 2, 90), ("booking.assistant", 2, 1, 80),
    ("support.triage", 3, 4, 70), ("marketing.copy", 0, 5, 60), ("search.embeddings", 7, None, 50),
)
_CHAT_TITLES = ("Party for 12 next Saturday", "Menu question", "Change my booking", "Gift card balance",
                "Allergy information", "Corporate event quote", None)
_CHAT_LINES = (
    ("user", "Hi, can I book a chef for 15 people on the 14th?"),
    ("assistant", "Of course. Which city, and would you like the standard or the premium menu?"),
    ("user", "Premium, in Austin. Do you cover travel?"),
    ("assistant", "Travel within 30 miles is included. I have 6 pm or 8 pm available."),
    ("user", "8 pm please. Is there a vegetarian option?"),
    ("assistant", "Yes: tofu, vegetables and fried rice. Shall I add it for some guests?"),
)

#: Every table fill knows, in the order that respects foreign keys.
TABLES = (
    "public.stations", "public.roles", "crm.customers", "crm.contacts", "crm.leads", "read.customer_summary",
    "newsletter.subscribers", "newsletter.campaigns", "newsletter.campaign_sends",
    "payments.stripe_customers", "payments.payments", "payments.refunds",
    "social.social_accounts", "social.social_posts",
    "public.users", "public.user_roles", "public.user_preferences",
    "ai.models", "ai.routes", "ai.conversations", "ai.messages", "ai.requests",
)


def fill(url_or_engine, *, scale: int = 1, seed: int = 42) -> dict[str, int]:
    """Insert demo rows into the sample tables that exist in the database now.

    Args:
        url_or_engine: a PostgreSQL URL (``postgresql://`` or ``postgresql+psycopg://``) or a SQLAlchemy
            engine that uses the psycopg 3 driver.
        scale: multiplies every count (1: 5,000 customers, 2,000 users, 20,000 payments, ...).
        seed: the rows depend only on the seed, the scale and which tables and columns exist.

    Returns:
        Rows inserted per table (``"schema.table"``), only for tables that received rows.

    Raises:
        ValueError: scale is below 1, or the engine does not use the psycopg 3 driver.
    """
    if scale < 1:
        raise ValueError(f"scale must be 1 or more, got {scale}; it multiplies the number of rows.")
    connection, close = _connect(url_or_engine)
    try:
        with connection.transaction():
            counts = _Filler(connection, scale, random.Random(seed)).run()
        # Fresh statistics so planner estimates (row counts by pg_class.reltuples) are right at once.
        with connection.cursor() as cur:
            for table in counts:
                cur.execute(f"ANALYZE {table}")
        return counts
    finally:
        close()


def _connect(url_or_engine):
    if isinstance(url_or_engine, str):
        url = url_or_engine
        for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
            if url.startswith(prefix):
                url = "postgresql://" + url[len(prefix):]
        connection = psycopg.connect(url, autocommit=True)
        return connection, connection.close
    engine = url_or_engine
    if getattr(engine.dialect, "driver", None) != "psycopg":
        raise ValueError(
            f"fill needs a SQLAlchemy engine on the psycopg 3 driver (postgresql+psycopg://), "
            f"got dialect driver {getattr(engine.dialect, 'driver', type(engine).__name__)!r}. "
            f"Pass the URL instead, or create the engine with postgresql+psycopg://."
        )
    pooled = engine.raw_connection()
    connection = pooled.driver_connection
    was_autocommit = connection.autocommit
    connection.autocommit = True

    def close() -> None:
        # The connection goes back to SQLAlchemy's pool: leave it as the pool handed it out.
        connection.autocommit = was_autocommit
        pooled.close()

    return connection, close


class _Filler:
    """One fill: reads the database's shape, then generates and copies table after table."""

    def __init__(self, connection: psycopg.Connection, scale: int, rng: random.Random):
        self.conn, self.scale, self.rng = connection, scale, rng
        self.columns = self._columns()
        self.counts: dict[str, int] = {}
        self.ids: dict[str, list[int]] = {}  # ids inserted now, per table, for children to point at
        # Rows inserted now that children of other schemas need whole (names, dates), not only ids.
        self._customers: list[dict] = []
        self._leads: list[dict] = []

    # --- database shape -------------------------------------------------------------------------------
    def _columns(self) -> dict[str, set[str]]:
        rows = self.conn.execute(
            "SELECT table_schema || '.' || table_name, column_name FROM information_schema.columns "
            "WHERE table_schema || '.' || table_name = ANY(%s)",
            [list(TABLES)],
        ).fetchall()
        columns: dict[str, set[str]] = {}
        for table, column in rows:
            columns.setdefault(table, set()).add(column)
        return columns

    def has(self, table: str, column: str | None = None) -> bool:
        return table in self.columns and (column is None or column in self.columns[table])

    def next_id(self, table: str, column: str = "id") -> int:
        return self.conn.execute(f"SELECT coalesce(max({column}), 0) + 1 FROM {table}").fetchone()[0]

    def existing_ids(self, table: str) -> list[int]:
        return [r[0] for r in self.conn.execute(f"SELECT id FROM {table} ORDER BY id")]

    def copy(self, table: str, rows: Sequence[dict], serial: bool = True) -> None:
        """COPY the rows' columns that exist in the table now; move its id sequence past them."""
        if not rows:
            return
        names = [c for c in rows[0] if c in self.columns[table]]
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([row[c] for c in names])
            if serial:
                # Explicit ids leave the sequence behind; the application's next INSERT must not collide.
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}")
        self.counts[table] = len(rows)
        if serial:
            self.ids[table] = [r["id"] for r in rows]

    # --- helpers for realistic values ------------------------------------------------------------------
    def when(self, after: datetime = _BASE_TIME, within_days: int = 365) -> datetime:
        seconds = self.rng.randrange(within_days * 24 * 3600)
        return after + timedelta(seconds=seconds)

    def person(self) -> tuple[str, str]:
        return self.rng.choice(_FIRST_NAMES), self.rng.choice(_LAST_NAMES)

    def email(self, first: str, last: str, unique: int, tag: str = "") -> str:
        return f"{first}.{last}{tag}{unique}@{self.rng.choice(_DOMAINS)}".lower()

    def n(self, base: int) -> int:
        return base * self.scale

    # --- the tables -------------------------------------------------------------------------------------
    def run(self) -> dict[str, int]:
        self.stations_and_roles()
        self.crm()
        self.read_projections()
        self.newsletter()
        self.payments()
        self.social()
        self.users()
        self.ai()
        return self.counts

    def stations_and_roles(self) -> None:
        if self.has("public.stations"):
            self.ids["public.stations"] = self.existing_ids("public.stations")
            if not self.ids["public.stations"]:
                self.copy("public.stations", [
                    {"id": i, "code": code, "name": f"My Hibachi {city}", "timezone": tz,
                     "created_at": _BASE_TIME - timedelta(days=400 - 20 * i)}
                    for i, (code, city, tz) in enumerate(_CITIES, start=1)
                ])
        if self.has("public.roles"):
            self.ids["public.roles"] = self.existing_ids("public.roles")
            if not self.ids["public.roles"]:
                self.copy("public.roles", [
                    {"id": i, "name": name, "description": text}
                    for i, (name, text) in enumerate(_ROLES, start=1)
                ])

    def crm(self) -> None:
        if not self.has("crm.customers"):
            return
        rng, stations = self.rng, self.ids.get("public.stations") or [None]
        start = self.next_id("crm.customers")
        customers = []
        for cid in range(start, start + self.n(5000)):
            first, last = self.person()
            customers.append({
                "id": cid, "email": self.email(first, last, cid), "first_name": first, "last_name": last,
                "phone": (f"+1{rng.randrange(200, 999)}{rng.randrange(1000000, 9999999)}"
                          if rng.random() < .8 else None),
                "status": rng.choices(("active", "inactive", "churned"), (85, 10, 5))[0],
                "created_at": self.when(), "station_id": rng.choice(stations),
            })
        self.copy("crm.customers", customers)
        self._customers = customers

        start = self.next_id("crm.contacts")
        contacts = []
        for i in range(self.n(15000)):
            customer = customers[rng.randrange(len(customers))]
            contacts.append({
                "id": start + i, "customer_id": customer["id"], "kind": rng.choice(_CONTACT_KINDS),
                "note": rng.choice(_CONTACT_NOTES), "occurred_at": self.when(customer["created_at"], 180),
            })
        self.copy("crm.contacts", contacts)
        self._contacts = contacts

        start = self.next_id("crm.leads")
        leads = []
        for lid in range(start, start + self.n(8000)):
            first, last = self.person()
            converted = customers[rng.randrange(len(customers))]["id"] if rng.random() < .35 else None
            leads.append({
                "id": lid, "email": self.email(first, last, lid, tag=".lead"),
                "name": f"{first} {last}" if rng.random() < .9 else None,
                "source": rng.choice(_LEAD_SOURCES),
                "status": "converted" if converted else rng.choice(("new", "contacted", "qualified", "lost")),
                "customer_id": converted, "created_at": self.when(),
            })
        self.copy("crm.leads", leads)
        self._leads = leads

    def read_projections(self) -> None:
        if self.has("read.customer_summary") and "crm.customers" in self.ids:
            # A projection is derived, never invented: build it from the rows just written.
            inserted = self.conn.execute(
                """
                INSERT INTO read.customer_summary (customer_id, email, full_name, contact_count,
                                                   last_contact_at, refreshed_at)
                SELECT c.id, c.email, c.first_name || ' ' || c.last_name, count(k.id), max(k.occurred_at),
                       %s
                FROM crm.customers c LEFT JOIN crm.contacts k ON k.customer_id = c.id
                WHERE c.id = ANY(%s)
                GROUP BY c.id
                """,
                [_BASE_TIME + timedelta(days=400), self.ids["crm.customers"]],
            ).rowcount
            self.counts["read.customer_summary"] = inserted
        matview = self.conn.execute(
            "SELECT 1 FROM pg_matviews WHERE schemaname = 'read' AND matviewname = 'lead_funnel_daily'"
        ).fetchone()
        if matview:
            self.conn.execute("REFRESH MATERIALIZED VIEW read.lead_funnel_daily")

    def newsletter(self) -> None:
        rng, campaigns = self.rng, []
        if self.has("newsletter.subscribers"):
            start = self.next_id("newsletter.subscribers")
            leads = rng.sample(self._leads, min(len(self._leads), self.n(3600)))
            subscribers = []
            for i in range(self.n(6000)):
                sid = start + i
                lead = leads[i] if i < len(leads) else None
                if lead:
                    email, since = lead["email"], self.when(lead["created_at"], 60)
                else:
                    first, last = self.person()
                    email, since = self.email(first, last, sid, tag=".reader"), self.when()
                unsubscribed = rng.random() < .08
                subscribers.append({
                    "id": sid, "email": email, "lead_id": lead["id"] if lead else None,
                    "status": "unsubscribed" if unsubscribed else "subscribed", "subscribed_at": since,
                    "unsubscribed_at": self.when(since, 120) if unsubscribed else None,
                })
            self.copy("newsletter.subscribers", subscribers)
        if self.has("newsletter.campaigns"):
            start = self.next_id("newsletter.campaigns")
            campaigns = []
            for i in range(self.n(24)):
                sent = _BASE_TIME + timedelta(days=15 * i + rng.randrange(3), hours=10)
                subject = _CAMPAIGN_SUBJECTS[i % len(_CAMPAIGN_SUBJECTS)]
                campaigns.append({
                    "id": start + i, "name": f"{sent:%Y-%m} {subject}", "subject": subject,
                    "scheduled_at": sent, "sent_at": sent if i < self.n(22) else None,
                    "created_at": sent - timedelta(days=7),
                })
            self.copy("newsletter.campaigns", campaigns)
        if self.has("newsletter.campaign_sends") and self.ids.get("newsletter.subscribers"):
            sends = []
            subscriber_ids = self.ids["newsletter.subscribers"]
            for campaign in campaigns:
                if campaign["sent_at"] is None:
                    continue
                for sid in rng.sample(subscriber_ids, min(len(subscriber_ids), self.n(600))):
                    sent = campaign["sent_at"] + timedelta(seconds=rng.randrange(3600))
                    opened = sent + timedelta(minutes=rng.randrange(5, 4000)) if rng.random() < .38 else None
                    sends.append({
                        "campaign_id": campaign["id"], "subscriber_id": sid, "sent_at": sent,
                        "opened_at": opened,
                        "clicked_at": opened + timedelta(seconds=rng.randrange(5, 600))
                        if opened and rng.random() < .25 else None,
                    })
            self.copy("newsletter.campaign_sends", sends, serial=False)

    def payments(self) -> None:
        if not self.has("payments.stripe_customers"):
            return
        rng = self.rng
        start = self.next_id("payments.stripe_customers")
        chosen = rng.sample(self._customers, min(len(self._customers), self.n(4000)))
        stripe = [{
            "id": start + i, "customer_id": c["id"],
            "stripe_id": f"cus_{start + i:06d}{rng.getrandbits(40):010x}",
            "created_at": self.when(c["created_at"], 30),
        } for i, c in enumerate(chosen)]
        self.copy("payments.stripe_customers", stripe)

        start = self.next_id("payments.payments")
        payments = []
        for i in range(self.n(20000)):
            account = stripe[rng.randrange(len(stripe))]
            payments.append({
                "id": start + i, "stripe_customer_id": account["id"],
                "stripe_payment_intent_id": f"pi_{start + i:08d}{rng.getrandbits(48):012x}",
                "amount_cents": (rng.choice((5000, 10000, 15000)) if rng.random() < .3
                                 else rng.randrange(2500, 250000)),
                "currency": "usd" if rng.random() < .95 else "cad",
                "status": rng.choices(("succeeded", "failed", "pending"), (90, 7, 3))[0],
                "description": rng.choice(_PAYMENT_DESCRIPTIONS),
                "created_at": self.when(account["created_at"]),
            })
        refunded = rng.sample([p for p in payments if p["status"] == "succeeded"], self.n(1000))
        for p in refunded:
            p["status"] = "refunded"
        self.copy("payments.payments", payments)

        start = self.next_id("payments.refunds")
        self.copy("payments.refunds", [{
            "id": start + i, "payment_id": p["id"],
            "amount_cents": p["amount_cents"] if rng.random() < .7 else max(1, p["amount_cents"] // 2),
            "reason": rng.choice(_REFUND_REASONS), "created_at": self.when(p["created_at"], 20),
        } for i, p in enumerate(refunded)])

    def social(self) -> None:
        if not self.has("social.social_accounts"):
            return
        rng = self.rng
        start = self.next_id("social.social_accounts")
        accounts = []
        for i in range(self.n(1500)):
            customer = self._customers[rng.randrange(len(self._customers))] if rng.random() < .7 else None
            first, last = (customer["first_name"], customer["last_name"]) if customer else self.person()
            accounts.append({
                "id": start + i, "customer_id": customer["id"] if customer else None,
                "platform": rng.choice(_PLATFORMS), "handle": f"{first}{last}{start + i}".lower(),
                "followers": int(rng.paretovariate(1.2) * 50), "connected_at": self.when(),
            })
        self.copy("social.social_accounts", accounts)
        start = self.next_id("social.social_posts")
        posts = []
        for i in range(self.n(10000)):
            account = accounts[rng.randrange(len(accounts))]
            first, _ = self.person()
            posts.append({
                "id": start + i, "account_id": account["id"], "external_id": f"{rng.getrandbits(60):015d}",
                "body": rng.choice(_POST_TEMPLATES).format(city=rng.choice(_CITIES)[1], name=first),
                "likes": int(rng.paretovariate(1.5) * 3),
                "posted_at": self.when(account["connected_at"], 200),
            })
        self.copy("social.social_posts", posts)

    def users(self) -> None:
        if not self.has("public.users"):
            return
        rng, stations, roles = self.rng, self.ids["public.stations"], self.ids["public.roles"]
        start = self.next_id("public.users")
        users = []
        for uid in range(start, start + self.n(2000)):
            first, last = self.person()
            users.append({
                "id": uid, "email": self.email(first, last, uid, tag=".staff"), "first_name": first,
                "last_name": last, "station_id": rng.choice(stations) if rng.random() < .95 else None,
                "is_active": rng.random() < .93, "created_at": self.when(),
                # Only copied once the column exists (after the backfill revision b7e4f0c2d913).
                "full_name": f"{first} {last}",
            })
        self.copy("public.users", users)
        if self.has("public.user_roles") and roles:
            grants = []
            for user in users:
                for role in rng.sample(roles, 2 if rng.random() < .25 else 1):
                    grants.append({
                        "user_id": user["id"], "role_id": role,
                        "station_id": user["station_id"] or rng.choice(stations),
                        "granted_at": self.when(user["created_at"], 30),
                    })
            self.copy("public.user_roles", grants, serial=False)
        if self.has("public.user_preferences"):
            start = self.next_id("public.user_preferences")
            chosen = rng.sample(users, self.n(1500))
            self.copy("public.user_preferences", [{
                "id": start + i, "user_id": u["id"],
                "theme": rng.choices(("light", "dark", "system"), (50, 35, 15))[0],
                "language": rng.choices(("en", "es", "fr", "ja", "ko"), (70, 15, 5, 5, 5))[0],
            } for i, u in enumerate(chosen)])

    def ai(self) -> None:
        if not self.has("ai.models"):
            return
        rng = self.rng
        models = self.existing_ids("ai.models")
        if not models:
            self.copy("ai.models", [{
                "id": i, "provider": p, "name": name, "context_window": window,
                "input_cost_per_mtok": Decimal(cin), "output_cost_per_mtok": Decimal(cout),
                "is_active": name != "mistral-small", "supports_chat": chat,
            } for i, (p, name, window, cin, cout, chat) in enumerate(_AI_MODELS, start=1)])
            models = self.ids["ai.models"]
        routes = self.conn.execute(
            "SELECT id, model_id, fallback_model_id FROM ai.routes ORDER BY id"
        ).fetchall()
        if not routes:
            rows = [{
                "id": i, "name": name, "model_id": models[m],
                "fallback_model_id": models[f] if f is not None else None, "priority": priority,
                "created_at": _BASE_TIME + timedelta(days=i),
            } for i, (name, m, f, priority) in enumerate(_AI_ROUTES, start=1)]
            self.copy("ai.routes", rows)
            routes = [(r["id"], r["model_id"], r["fallback_model_id"]) for r in rows]

        conversations: list[dict] = []
        if self.has("ai.conversations"):
            user_ids = self.ids.get("public.users") or list(range(1, self.n(2000) + 1))
            start = self.next_id("ai.conversations")
            chat_models = models[:5]
            for i in range(self.n(2000)):
                created = self.when()
                conversations.append({
                    "id": start + i, "user_id": rng.choice(user_ids), "title": rng.choice(_CHAT_TITLES),
                    "model_id": rng.choice(chat_models), "created_at": created,
                    "archived_at": self.when(created, 60) if rng.random() < .2 else None,
                })
            self.copy("ai.conversations", conversations)
            start = self.next_id("ai.messages")
            messages = []
            for conversation in conversations:
                at = conversation["created_at"]
                for role, content in _CHAT_LINES[: rng.choice((2, 4, 6, 6))]:
                    at += timedelta(seconds=rng.randrange(2, 90))
                    messages.append({
                        "id": start + len(messages), "conversation_id": conversation["id"], "role": role,
                        "content": content, "token_count": len(content.split()) * 4 // 3 + rng.randrange(3),
                        "created_at": at,
                    })
            self.copy("ai.messages", messages)

        start = self.next_id("ai.requests")
        requests = []
        for i in range(self.n(20000)):
            route_id, model_id, fallback_id = routes[rng.randrange(len(routes))]
            status = rng.choices(("ok", "error", "timeout", "fallback"), (92, 3, 2, 3))[0]
            conversation = rng.choice(conversations) if conversations and rng.random() < .3 else None
            requests.append({
                "id": start + i, "route_id": route_id,
                "model_id": fallback_id if status == "fallback" and fallback_id else model_id,
                "prompt_tokens": int(rng.lognormvariate(6, 1)) + 1,
                "completion_tokens": (0 if status in ("error", "timeout")
                                      else int(rng.lognormvariate(5, .8)) + 1),
                "latency_ms": 30000 if status == "timeout" else int(rng.lognormvariate(6.5, .6)) + 50,
                "status": status,
                "created_at": self.when(conversation["created_at"], 1) if conversation else self.when(),
                "conversation_id": conversation["id"] if conversation else None,
            })
        self.copy("ai.requests", requests)


def _main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fill the sample databases with demo rows.")
    parser.add_argument(
        "url", help="postgresql://user@host:port/dbname (password from ~/.pgpass or PGPASSWORD)"
    )
    parser.add_argument("--scale", type=int, default=1, help="multiplies every count (default 1)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    counts = fill(args.url, scale=args.scale, seed=args.seed)
    width = max((len(t) for t in counts), default=5)
    for table, rows in counts.items():
        print(f"{table:<{width}}  {rows:>9,}")
    print(f"{'total':<{width}}  {sum(counts.values()):>9,}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
