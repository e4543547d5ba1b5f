"""Documents of the data API: the node inventory and node-scoped write tokens."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TagInfo(BaseModel):
    tag: str
    rows: int
    width: int | None = Field(default=None, description="features per row, fixed by the tag's first upload")


class NodeView(BaseModel):
    name: str
    cluster: str | None = None
    learner: bool
    data_server: str | None = Field(default=None, description="host:port of the node's data server")
    reachable: bool | None = Field(default=None, description="the data server answered (None: the node has none)")
    tags: list[TagInfo] = Field(default_factory=list, description="the customer's tags on this node")
    error: str | None = Field(default=None, description="why the tags could not be listed")


class NodeList(BaseModel):
    customer: str = Field(description="whose namespace the tags are from")
    data_tls: bool = Field(description="data servers speak TLS and need a data token")
    ca_pem: str | None = Field(default=None, description="the CA of the data servers' certificates")
    nodes: list[NodeView]


class NodesQuery(BaseModel):
    customer_id: str | None = Field(
        default=None, alias="customerID", description="admin only: list this customer's tags (default: your own)"
    )


class DataTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    node: str = Field(min_length=1, max_length=128, description="the learner node whose data server the token opens")
    customer_id: str | None = Field(
        default=None, alias="customerID", description="admin only: the customer whose namespace the token writes to"
    )


class DataToken(BaseModel):
    customer: str
    node: str
    scope: str = "write"
    data_server: str = Field(description="host:port of the node's data server")
    token: str | None = Field(
        default=None,
        description="send as 'authorization: Bearer <token>' (None: data servers are open, development only)",
    )
    expires_at: float | None = None
    ca_pem: str | None = Field(default=None, description="verify the data server with this CA (TLS)")
