"""SQLAlchemy models of the main migration set, exactly as its head revision leaves the database.

``alembic check`` compares these with a database at head and must find nothing: when you change a model,
generate a revision (``alembic revision --autogenerate``) and review it before committing both.

Constraint and index names come from ``NAMING_CONVENTION`` so that the names the revisions create by hand
and the names these models imply are the same; Alembic matches unique constraints and indexes by name.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Schemas this migration set owns (None is the default schema, ``public``).
SCHEMAS = (None, "crm", "payments", "read", "newsletter", "social")

NOW = text("now()")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Restrict autogenerate to this set's schemas and tables.

    Another migration set (``ai``) and dbrunbook's ledger may live in the same database; without this
    filter ``alembic check`` would report their tables as tables to drop.
    """
    if type_ == "schema":
        return name in SCHEMAS
    if type_ == "table":
        return not (name or "").startswith("alembic_version")
    return True


# --- crm (001, 004, ea90695) ------------------------------------------------------------------------------
class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = {"schema": "crm"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    phone: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(20), server_default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    station_id: Mapped[int | None] = mapped_column(ForeignKey("stations.id"), index=True)


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        # ea90695 replaced the single-column indexes with this one: every query filters by customer
        # and sorts by time.
        Index("ix_contacts_customer_id_occurred_at", "customer_id", "occurred_at"),
        {"schema": "crm"},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("crm.customers.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    note: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Lead(Base):
    __tablename__ = "leads"
    __table_args__ = {"schema": "crm"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), server_default="new")
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("crm.customers.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW, index=True)


# --- read (002); the materialized view read.lead_funnel_daily is not a table and has no model ----------
class CustomerSummary(Base):
    __tablename__ = "customer_summary"
    __table_args__ = {"schema": "read"}

    # A projection is rebuilt from crm, so it has no foreign key and takes the customer's id as is.
    customer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str] = mapped_column(String(201))
    contact_count: Mapped[int] = mapped_column(Integer, server_default="0")
    last_contact_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refreshed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


# --- newsletter (003n) --------------------------------------------------------------------------------------
class Subscriber(Base):
    __tablename__ = "subscribers"
    __table_args__ = {"schema": "newsletter"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("crm.leads.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(20), server_default="subscribed")
    subscribed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = {"schema": "newsletter"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(255))
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class CampaignSend(Base):
    __tablename__ = "campaign_sends"
    __table_args__ = {"schema": "newsletter"}

    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("newsletter.campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("newsletter.subscribers.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    clicked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --- payments (001s, ea90695) -----------------------------------------------------------------------------
class StripeCustomer(Base):
    __tablename__ = "stripe_customers"
    __table_args__ = {"schema": "payments"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("crm.customers.id"), unique=True)
    stripe_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        {"schema": "payments"},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stripe_customer_id: Mapped[int] = mapped_column(ForeignKey("payments.stripe_customers.id"), index=True)
    stripe_payment_intent_id: Mapped[str] = mapped_column(String(64), unique=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), server_default="usd")
    status: Mapped[str] = mapped_column(String(20))
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW, index=True)


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = {"schema": "payments"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.payments.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


# --- social (003s, ea90695) -------------------------------------------------------------------------------
class SocialAccount(Base):
    __tablename__ = "social_accounts"
    __table_args__ = (UniqueConstraint("platform", "handle"), {"schema": "social"})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("crm.customers.id", ondelete="SET NULL"))
    platform: Mapped[str] = mapped_column(String(20))
    handle: Mapped[str] = mapped_column(String(100))
    followers: Mapped[int] = mapped_column(Integer, server_default="0")
    connected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class SocialPost(Base):
    __tablename__ = "social_posts"
    __table_args__ = {"schema": "social"}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("social.social_accounts.id", ondelete="CASCADE"), index=True
    )
    external_id: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    likes: Mapped[int] = mapped_column(Integer, server_default="0")
    posted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --- station multi-tenant RBAC in public (004, a1b2c3d4e5f6, b7e4f0c2d913) ---------------------------------
class Station(Base):
    __tablename__ = "stations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64), server_default="UTC")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str | None] = mapped_column(String(255))


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    station_id: Mapped[int | None] = mapped_column(ForeignKey("stations.id"), index=True)
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    # b7e4f0c2d913: added nullable, backfilled from first_name || ' ' || last_name, then made NOT NULL.
    full_name: Mapped[str] = mapped_column(String(255))


class UserRole(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True)
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"), primary_key=True)
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class UserPreferences(Base):
    __tablename__ = "user_preferences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, unique=True)
    theme: Mapped[str] = mapped_column(String(20), default="light", server_default="light")
    language: Mapped[str] = mapped_column(String(10), default="en", server_default="en")
