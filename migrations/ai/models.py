"""SQLAlchemy models of the ai migration set, exactly as its head revision leaves the schema ``ai``.

``alembic check`` compares these with a database at head and must find nothing. Names of constraints and
indexes follow ``NAMING_CONVENTION``, the same convention as the main set.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
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

#: The only schema this migration set owns.
SCHEMAS = ("ai",)

NOW = text("now()")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Restrict autogenerate to the schema ``ai``: the main set and dbrunbook share the database."""
    if type_ == "schema":
        return name in SCHEMAS
    return True


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("provider", "name"), {"schema": "ai"})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(100))
    context_window: Mapped[int] = mapped_column(Integer)
    input_cost_per_mtok: Mapped[Decimal] = mapped_column(Numeric(10, 4))
    output_cost_per_mtok: Mapped[Decimal] = mapped_column(Numeric(10, 4))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # cdf6709a3b1e: chat models are the only ones a conversation may use.
    supports_chat: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class Route(Base):
    __tablename__ = "routes"
    __table_args__ = {"schema": "ai"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("ai.models.id"))
    fallback_model_id: Mapped[int | None] = mapped_column(ForeignKey("ai.models.id"))
    priority: Mapped[int] = mapped_column(Integer, server_default="100")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class Request(Base):
    __tablename__ = "requests"
    __table_args__ = {"schema": "ai"}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    route_id: Mapped[int] = mapped_column(ForeignKey("ai.routes.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("ai.models.id"))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW, index=True)
    # cdf6709a3b1e: requests made inside a chat point at their conversation.
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("ai.conversations.id", ondelete="SET NULL"), index=True
    )


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = {"schema": "ai"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The user lives in the main set's database schema; no foreign key across migration sets.
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    title: Mapped[str | None] = mapped_column(String(200))
    model_id: Mapped[int] = mapped_column(ForeignKey("ai.models.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = {"schema": "ai"}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("ai.conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
