//! `GET /payments`, `POST /payments/redeem` and the `/channels` routes: the node's payments and
//! the channels it pays through.

use alloy::primitives::{Address, B256, U256};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::extract::{JsonBody, Path, required};
use crate::error::{Error, ErrorCode};
use crate::node::NodeContext;
use crate::payments::chain::Mined;
use crate::payments::payer::{OutgoingChannel, channel_json};
use crate::payments::{Payments, amount, payee};

/// An amount as requesters write it: wei as a JSON number, or a string such as `"0.01eth"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AmountInput {
    /// Whole wei.
    Wei(u64),
    /// Wei, gwei or eth with a unit (see [`amount::parse_amount`]).
    Text(String),
}

impl AmountInput {
    fn parse(&self, field: &str) -> Result<U256, Error> {
        let amount = match self {
            Self::Wei(wei) => U256::from(*wei),
            Self::Text(text) => amount::parse_amount(text)
                .map_err(|problem| Error::invalid_field(field, problem))?,
        };
        if amount.is_zero() {
            return Err(Error::invalid_field(field, "must be greater than 0"));
        }
        Ok(amount)
    }
}

/// A channel to open.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// gRPC address of the provider's node; its node ID is asked for.
    target: Option<String>,
    /// The provider's node ID (address), when no target is given.
    provider: Option<String>,
    /// The deposit.
    deposit: Option<AmountInput>,
}

/// An amount to add to a channel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUpRequest {
    amount: Option<AmountInput>,
}

fn enabled(context: &NodeContext) -> Result<&Payments, Error> {
    context.payments.as_ref().ok_or_else(|| {
        Error::new(
            ErrorCode::PaymentsOff,
            "payments are off on this node; turn them on with `payments.enabled` (see docs/configuration.md)",
        )
    })
}

fn channel_id(text: &str) -> Result<B256, Error> {
    text.parse()
        .map_err(|_| Error::invalid_field("channel_id", "must be 32 bytes of 0x-prefixed hex"))
}

fn with_transaction(channel: &OutgoingChannel, mined: &Mined) -> serde_json::Value {
    let mut body = channel_json(channel);
    body["transaction"] = serde_json::json!({
        "tx": mined.tx.to_string(),
        "gas_used": mined.gas_used,
        "fee_wei": mined.fee.to_string(),
    });
    body
}

/// The node's payments: settings, balance, channels both ways, spent, earned, pending;
/// `{"enabled": false}` when off.
pub async fn summary(State(context): State<NodeContext>) -> Result<Response, Error> {
    let summary = match &context.payments {
        Some(payments) => payments.summary().await?,
        None => serde_json::json!({ "enabled": false }),
    };
    Ok(axum::Json(summary).into_response())
}

/// Redeems every unredeemed voucher now.
pub async fn redeem(State(context): State<NodeContext>) -> Result<Response, Error> {
    let payments = enabled(&context)?;
    let outcomes = payments.payee.redeem_all().await;
    payee::log_failures(&outcomes);
    let (mut redeemed, mut failed) = (Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome {
            Ok((channel, redemption)) => {
                let mut body = payee::redemption_json(&redemption);
                body["channel_id"] = channel.to_string().into();
                redeemed.push(body);
            }
            Err((channel, error)) => failed.push(serde_json::json!({
                "channel_id": channel.to_string(),
                "code": error.code.as_str(),
                "message": error.message,
            })),
        }
    }
    Ok(axum::Json(serde_json::json!({ "redeemed": redeemed, "failed": failed })).into_response())
}

/// Opens a channel to a provider, named by its node's address (`target`) or its node ID.
pub async fn open(
    State(context): State<NodeContext>,
    JsonBody(request): JsonBody<OpenRequest>,
) -> Result<Response, Error> {
    let payments = enabled(&context)?;
    let deposit = required(request.deposit, "deposit")?.parse("deposit")?;
    let provider: Address = match (request.target, request.provider) {
        (Some(target), None) => {
            let info = payments.payer.target_info(&target).await?;
            if info.payment_terms.is_none() {
                return Err(Error::new(
                    ErrorCode::PaymentsOff,
                    format!("target {target} does not take payments; it needs no channel"),
                ));
            }
            info.node_id.parse().map_err(|_| {
                Error::new(
                    ErrorCode::TargetError,
                    format!("target {target} has a node ID that is not an address"),
                )
            })?
        }
        (None, Some(provider)) => provider
            .parse()
            .map_err(|_| Error::invalid_field("provider", "must be a 0x-prefixed address"))?,
        (Some(_), Some(_)) => {
            return Err(Error::invalid_field(
                "provider",
                "cannot be given together with `target`",
            ));
        }
        (None, None) => return Err(Error::missing_field("target")),
    };
    let (channel, mined) = payments.payer.open_channel(provider, deposit).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(with_transaction(&channel, &mined)),
    )
        .into_response())
}

/// Finds the channels this node opened again from the chain, after it lost its database.
pub async fn recover(State(context): State<NodeContext>) -> Result<Response, Error> {
    let recovered = enabled(&context)?.payer.recover().await?;
    let channels: Vec<_> = recovered.iter().map(channel_json).collect();
    Ok(axum::Json(serde_json::json!({ "recovered": channels })).into_response())
}

/// One channel this node pays through.
pub async fn show(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let channel = enabled(&context)?.payer.channel(channel_id(&id)?)?;
    Ok(axum::Json(channel_json(&channel)).into_response())
}

/// Adds to a channel's deposit.
pub async fn top_up(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<TopUpRequest>,
) -> Result<Response, Error> {
    let payments = enabled(&context)?;
    let amount = required(request.amount, "amount")?.parse("amount")?;
    let (channel, mined) = payments.payer.top_up(channel_id(&id)?, amount).await?;
    Ok(axum::Json(with_transaction(&channel, &mined)).into_response())
}

/// Asks to close a channel, or closes it once the challenge period is over.
pub async fn close(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let payments = enabled(&context)?;
    let (channel, mined) = payments.payer.close(channel_id(&id)?).await?;
    Ok(axum::Json(with_transaction(&channel, &mined)).into_response())
}
